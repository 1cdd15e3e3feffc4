package loupe.bench.plot;

import loupe.LoupeException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import javax.imageio.ImageIO;
import javax.xml.parsers.DocumentBuilderFactory;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class HeatmapTest {
    static Heatmap sample() {
        return new Heatmap("title <&\"'>", "layer", List.of("0", "1"), "position", List.of("a", " <b>", "c\n"),
                new float[][]{{-2f, 0f, 1f}, {2f, Float.NaN, 0.5f}});
    }

    @Test
    void divergingScaleIsWhiteAtZeroRedBelowBlueAbove() {
        Heatmap h = sample();   // symmetric range: ±2
        assertArrayEquals(new int[]{247, 247, 247}, h.color(0f));
        assertArrayEquals(new int[]{103, 0, 31}, h.color(-2f));
        assertArrayEquals(new int[]{5, 48, 97}, h.color(2f));
        assertArrayEquals(new int[]{5, 48, 97}, h.color(7f), "clamped");
        assertArrayEquals(new int[]{200, 200, 200}, h.color(Float.NaN));
        h.range(-1, 3);   // zero stays white in an asymmetric range
        assertArrayEquals(new int[]{247, 247, 247}, h.color(0f));
        assertEquals("0.00", Heatmap.fmt(-0.001f));
    }

    @Test
    void writesWellFormedSvgAndPng(@TempDir Path dir) throws Exception {
        Path svg = dir.resolve("h.svg"), png = dir.resolve("sub/h.png");
        sample().legend("value").write(svg);
        sample().write(png);
        String s = Files.readString(svg);
        var doc = DocumentBuilderFactory.newInstance().newDocumentBuilder().parse(new ByteArrayInputStream(s.getBytes(StandardCharsets.UTF_8)));
        assertEquals("svg", doc.getDocumentElement().getNodeName());
        assertTrue(s.contains("title &lt;&amp;&quot;&apos;&gt;") && s.contains("value"), s);
        BufferedImage img = ImageIO.read(png.toFile());
        assertTrue(img.getWidth() > 100 && img.getHeight() > 50);
    }

    /** Inlined in one report, each heatmap's legend must use its own gradient (ids share one namespace). */
    @Test
    void legendsOfDifferentScalesUseDifferentGradientIds() {
        String a = sample().toSvg();
        String b = new Heatmap("t", "r", List.of("0"), "c", List.of("a", "b"), new float[][]{{0f, 5f}}).toSvg();
        java.util.regex.Pattern id = java.util.regex.Pattern.compile("linearGradient id=\"([^\"]+)\"");
        java.util.regex.Matcher ma = id.matcher(a), mb = id.matcher(b);
        assertTrue(ma.find() && mb.find());
        assertTrue(!ma.group(1).equals(mb.group(1)), "two scales, two ids");
        assertTrue(a.contains("url(#" + ma.group(1) + ")") && b.contains("url(#" + mb.group(1) + ")"));
        assertEquals(a, sample().toSvg(), "the same heatmap gives the same SVG");
    }

    @Test
    void badInputIsALoupeException(@TempDir Path dir) {
        assertThrows(LoupeException.class, () -> sample().write(dir.resolve("h.jpg")));
        assertThrows(LoupeException.class, () -> new Heatmap("t", "r", List.of("0"), "c", List.of("a", "b"), new float[][]{{1f}}));
        assertThrows(LoupeException.class, () -> sample().range(1, 1));
    }
}

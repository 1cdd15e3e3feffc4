package loupe.bench.plot;

import loupe.LoupeException;

import javax.imageio.ImageIO;
import java.awt.BasicStroke;
import java.awt.Color;
import java.awt.Font;
import java.awt.Graphics2D;
import java.awt.RenderingHints;
import java.awt.geom.AffineTransform;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;

/**
 * A labelled heatmap of a {@code [rows, cols]} grid of values, written as PNG (javax.imageio) or SVG
 * (plain text): a title, row and column labels with axis names, a diverging colour scale centred on
 * zero and a legend with the scale's values. The command line's patching, logit-lens and attribution
 * results are drawn with it.
 *
 * <p>Colours are ColorBrewer's RdBu, as TransformerLens's plots use it: negative red, zero white,
 * positive blue; NaN is grey. By default the scale is symmetric, {@code ±max|value|}; {@link #range}
 * fixes it (e.g. {@code [-1, 1]} for a normalized patching metric).
 *
 * <pre>{@code
 * new Heatmap("resid_pre patching", "layer", List.of("0", "1"), "position", List.of("The", " cat"), grid)
 *     .legend("normalized logit diff").write(Path.of("patch.png"));
 * }</pre>
 */
public final class Heatmap {
    static {
        // Drawing into a BufferedImage needs no display; say so before AWT initializes.
        if (System.getProperty("java.awt.headless") == null) System.setProperty("java.awt.headless", "true");
    }

    /** ColorBrewer RdBu, from most negative to most positive. */
    private static final int[][] STOPS = {
            {103, 0, 31}, {178, 24, 43}, {214, 96, 77}, {244, 165, 130}, {253, 219, 199}, {247, 247, 247},
            {209, 229, 240}, {146, 197, 222}, {67, 147, 195}, {33, 102, 172}, {5, 48, 97}};
    private static final int[] NAN = {200, 200, 200};

    private static final int FONT = 12, TITLE_FONT = 14, PAD = 8;
    /** Width of one character at {@link #FONT} in a monospaced font (both outputs use one, so layouts agree). */
    private static final double CHAR_W = 0.61 * FONT;

    private final String title, rowAxis, colAxis;
    private final List<String> rowLabels, colLabels;
    private final float[][] values;
    private String legend = "";
    private float lo, hi;

    /**
     * @param values {@code [rows][cols]}, one row per row label and one column per column label
     */
    public Heatmap(String title, String rowAxis, List<String> rowLabels, String colAxis, List<String> colLabels, float[][] values) {
        if (values.length != rowLabels.size())
            throw new LoupeException("heatmap: " + values.length + " rows of values for " + rowLabels.size() + " row labels");
        for (float[] r : values)
            if (r.length != colLabels.size())
                throw new LoupeException("heatmap: a row has " + r.length + " values for " + colLabels.size() + " column labels");
        if (values.length == 0 || colLabels.isEmpty()) throw new LoupeException("heatmap: nothing to draw (no rows or no columns)");
        this.title = title;
        this.rowAxis = rowAxis;
        this.colAxis = colAxis;
        this.rowLabels = List.copyOf(rowLabels);
        this.colLabels = List.copyOf(colLabels);
        this.values = values;
        float m = 0;
        for (float[] r : values) for (float v : r) if (Float.isFinite(v)) m = Math.max(m, Math.abs(v));
        if (m == 0) m = 1;
        this.lo = -m;
        this.hi = m;
    }

    /** The name of the values, shown above the legend. */
    public Heatmap legend(String name) {
        this.legend = name == null ? "" : name;
        return this;
    }

    /** The values at the two ends of the colour scale (zero stays white when it lies between them). */
    public Heatmap range(float min, float max) {
        if (!(min < max)) throw new LoupeException("heatmap: colour range [" + min + ", " + max + "] is empty");
        this.lo = min;
        this.hi = max;
        return this;
    }

    /** Writes a {@code .png} or {@code .svg} file, by the file's extension. */
    public void write(Path file) {
        String name = file.getFileName().toString().toLowerCase(Locale.ROOT);
        try {
            if (file.toAbsolutePath().getParent() != null) Files.createDirectories(file.toAbsolutePath().getParent());
            if (name.endsWith(".svg")) Files.writeString(file, toSvg());
            else if (name.endsWith(".png")) {
                if (!ImageIO.write(toImage(), "png", file.toFile()))
                    throw new LoupeException(file + ": this Java runtime has no PNG writer; write an .svg instead");
            } else throw new LoupeException(file + ": an image file must end in .png or .svg");
        } catch (IOException e) {
            throw new LoupeException(file + ": cannot write the image: " + e.getMessage(), e);
        }
    }

    // ------------------------------------------------------------------ layout (shared by PNG and SVG)

    /** Pixel positions of every part, computed once from the label lengths. */
    private record Layout(int cellW, int cellH, int gridX, int gridY, int gridW, int gridH, boolean verticalCols,
                          int legendX, int legendY, int legendH, int width, int height, boolean valuesInCells) {}

    private Layout layout() {
        int rows = values.length, cols = colLabels.size();
        int cellW = clamp(900 / cols, 18, 64), cellH = clamp(560 / rows, 14, 40);
        int rowLabelW = (int) Math.ceil(maxLen(rowLabels) * CHAR_W);
        int colLabelW = (int) Math.ceil(maxLen(colLabels) * CHAR_W);
        boolean vertical = colLabelW > cellW - 4;
        int gridX = PAD + FONT + PAD + rowLabelW + PAD;             // row-axis name (rotated), row labels
        int gridY = PAD + TITLE_FONT + PAD;
        int gridW = cellW * cols, gridH = cellH * rows;
        int colLabelH = vertical ? colLabelW : FONT;
        int legendX = gridX + gridW + 3 * PAD;
        int legendH = Math.max(gridH, 120);
        int legendTextW = (int) Math.ceil(Math.max(8, legend.length()) * CHAR_W);
        int width = Math.max(legendX + 16 + PAD + legendTextW + PAD, gridX + (int) (title.length() * CHAR_W * TITLE_FONT / FONT) + PAD);
        int height = Math.max(gridY + gridH + PAD + colLabelH + PAD + FONT, gridY + legendH + 2 * FONT + PAD) + PAD;
        boolean inCells = cellW >= 40 && cellH >= 16;
        return new Layout(cellW, cellH, gridX, gridY, gridW, gridH, vertical, legendX, gridY, legendH, width, height, inCells);
    }

    private static int clamp(int v, int lo, int hi) {
        return Math.max(lo, Math.min(hi, v));
    }

    private static int maxLen(List<String> labels) {
        int m = 0;
        for (String s : labels) m = Math.max(m, s.length());
        return m;
    }

    /** The colour of {@code v} on the diverging scale. */
    int[] color(float v) {
        if (Float.isNaN(v)) return NAN;
        double t = (Math.max(lo, Math.min(hi, v)) - lo) / (hi - lo);
        if (lo < 0 && hi > 0) {
            // Zero maps to the white middle even when the range is not symmetric.
            double zero = -lo / (hi - lo);
            t = t <= zero ? 0.5 * t / zero : 0.5 + 0.5 * (t - zero) / (1 - zero);
        }
        double x = t * (STOPS.length - 1);
        int i = Math.min(STOPS.length - 2, (int) Math.floor(x));
        double f = x - i;
        int[] c = new int[3];
        for (int k = 0; k < 3; k++) c[k] = (int) Math.round(STOPS[i][k] + f * (STOPS[i + 1][k] - STOPS[i][k]));
        return c;
    }

    private static boolean dark(int[] c) {
        return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] < 128;
    }

    /** Two decimals (scientific from 1000 up); a value that rounds to zero is shown as "0.00", without a sign. */
    static String fmt(float v) {
        if (Float.isNaN(v)) return "nan";
        if (Math.abs(v) >= 1000) return String.format(Locale.ROOT, "%.1e", v);
        String s = String.format(Locale.ROOT, "%.2f", v);
        return s.equals("-0.00") ? "0.00" : s;
    }

    private float legendValue(int tick) {   // 0 = top (hi), 1 = middle, 2 = bottom (lo)
        return tick == 0 ? hi : tick == 2 ? lo : (lo < 0 && hi > 0 ? 0f : (lo + hi) / 2);
    }

    private int legendTickY(Layout L, int tick) {
        float v = legendValue(tick);
        double t = (v - lo) / (hi - lo);
        return L.legendY() + (int) Math.round((1 - t) * L.legendH());
    }

    // ------------------------------------------------------------------ PNG

    /** The heatmap as an RGB image. */
    public BufferedImage toImage() {
        Layout L = layout();
        BufferedImage img = new BufferedImage(L.width(), L.height(), BufferedImage.TYPE_INT_RGB);
        Graphics2D g = img.createGraphics();
        try {
            g.setRenderingHint(RenderingHints.KEY_TEXT_ANTIALIASING, RenderingHints.VALUE_TEXT_ANTIALIAS_ON);
            g.setColor(Color.WHITE);
            g.fillRect(0, 0, L.width(), L.height());
            Font font = new Font(Font.MONOSPACED, Font.PLAIN, FONT);
            g.setFont(new Font(Font.MONOSPACED, Font.BOLD, TITLE_FONT));
            g.setColor(Color.BLACK);
            g.drawString(title, L.gridX(), PAD + TITLE_FONT);
            g.setFont(font);
            for (int r = 0; r < values.length; r++) {
                for (int c = 0; c < colLabels.size(); c++) {
                    int[] col = color(values[r][c]);
                    int x = L.gridX() + c * L.cellW(), y = L.gridY() + r * L.cellH();
                    g.setColor(new Color(col[0], col[1], col[2]));
                    g.fillRect(x, y, L.cellW(), L.cellH());
                    if (L.valuesInCells()) {
                        String s = fmt(values[r][c]);
                        g.setColor(dark(col) ? Color.WHITE : Color.BLACK);
                        g.drawString(s, x + (L.cellW() - (int) (s.length() * CHAR_W)) / 2, y + (L.cellH() + FONT) / 2 - 2);
                    }
                }
            }
            g.setColor(Color.GRAY);
            g.setStroke(new BasicStroke(1));
            g.drawRect(L.gridX(), L.gridY(), L.gridW(), L.gridH());
            g.setColor(Color.BLACK);
            // Row labels, right-aligned against the grid.
            for (int r = 0; r < rowLabels.size(); r++) {
                String s = rowLabels.get(r);
                g.drawString(s, L.gridX() - PAD - (int) Math.round(s.length() * CHAR_W), L.gridY() + r * L.cellH() + (L.cellH() + FONT) / 2 - 2);
            }
            // Column labels, below the grid (rotated to read upwards when they do not fit across).
            int labelTop = L.gridY() + L.gridH() + PAD;
            for (int c = 0; c < colLabels.size(); c++) {
                String s = colLabels.get(c);
                int cx = L.gridX() + c * L.cellW() + L.cellW() / 2;
                if (L.verticalCols()) {
                    AffineTransform saved = g.getTransform();
                    g.translate(cx + FONT / 2 - 2, labelTop + (int) Math.round(s.length() * CHAR_W));
                    g.rotate(-Math.PI / 2);
                    g.drawString(s, 0, 0);
                    g.setTransform(saved);
                } else {
                    g.drawString(s, cx - (int) Math.round(s.length() * CHAR_W / 2), labelTop + FONT);
                }
            }
            // Axis names: the column axis under the labels, the row axis rotated at the left edge.
            int colLabelH = L.verticalCols() ? (int) Math.ceil(maxLen(colLabels) * CHAR_W) : FONT;
            g.drawString(colAxis, L.gridX() + (L.gridW() - (int) (colAxis.length() * CHAR_W)) / 2, labelTop + colLabelH + PAD + FONT);
            AffineTransform saved = g.getTransform();
            g.translate(PAD + FONT, L.gridY() + (L.gridH() + (int) (rowAxis.length() * CHAR_W)) / 2);
            g.rotate(-Math.PI / 2);
            g.drawString(rowAxis, 0, 0);
            g.setTransform(saved);
            // Legend: a vertical colour bar from hi (top) to lo (bottom), with its values.
            for (int y = 0; y < L.legendH(); y++) {
                float v = hi - (hi - lo) * (y + 0.5f) / L.legendH();
                int[] col = color(v);
                g.setColor(new Color(col[0], col[1], col[2]));
                g.fillRect(L.legendX(), L.legendY() + y, 16, 1);
            }
            g.setColor(Color.GRAY);
            g.drawRect(L.legendX(), L.legendY(), 16, L.legendH());
            g.setColor(Color.BLACK);
            for (int tick = 0; tick < 3; tick++) {
                int y = legendTickY(L, tick);
                g.drawLine(L.legendX() + 16, y, L.legendX() + 20, y);
                g.drawString(fmt(legendValue(tick)), L.legendX() + 22, y + FONT / 2 - 1);
            }
            if (!legend.isEmpty()) g.drawString(legend, L.legendX(), L.legendY() + L.legendH() + 2 * FONT + PAD / 2);
        } finally {
            g.dispose();
        }
        return img;
    }

    // ------------------------------------------------------------------ SVG

    /** The heatmap as an SVG document (cells carry a tooltip with their row, column and value). */
    public String toSvg() {
        Layout L = layout();
        StringBuilder b = new StringBuilder();
        b.append("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"").append(L.width()).append("\" height=\"").append(L.height())
                .append("\" viewBox=\"0 0 ").append(L.width()).append(' ').append(L.height())
                .append("\" font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" font-size=\"").append(FONT).append("\">\n");
        b.append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        b.append(text(L.gridX(), PAD + TITLE_FONT, title, "start", "font-size=\"" + TITLE_FONT + "\" font-weight=\"bold\""));
        for (int r = 0; r < values.length; r++) {
            for (int c = 0; c < colLabels.size(); c++) {
                int[] col = color(values[r][c]);
                int x = L.gridX() + c * L.cellW(), y = L.gridY() + r * L.cellH();
                b.append("<rect x=\"").append(x).append("\" y=\"").append(y).append("\" width=\"").append(L.cellW())
                        .append("\" height=\"").append(L.cellH()).append("\" fill=\"").append(rgb(col)).append("\"><title>")
                        .append(esc(rowAxis + " " + rowLabels.get(r) + ", " + colAxis + " " + colLabels.get(c) + ": " + values[r][c]))
                        .append("</title></rect>\n");
                if (L.valuesInCells())
                    b.append(text(x + L.cellW() / 2, y + (L.cellH() + FONT) / 2 - 2, fmt(values[r][c]), "middle",
                            "fill=\"" + (dark(col) ? "white" : "black") + "\""));
            }
        }
        b.append("<rect x=\"").append(L.gridX()).append("\" y=\"").append(L.gridY()).append("\" width=\"").append(L.gridW())
                .append("\" height=\"").append(L.gridH()).append("\" fill=\"none\" stroke=\"gray\"/>\n");
        for (int r = 0; r < rowLabels.size(); r++)
            b.append(text(L.gridX() - PAD, L.gridY() + r * L.cellH() + (L.cellH() + FONT) / 2 - 2, rowLabels.get(r), "end", ""));
        int labelTop = L.gridY() + L.gridH() + PAD;
        for (int c = 0; c < colLabels.size(); c++) {
            int cx = L.gridX() + c * L.cellW() + L.cellW() / 2;
            if (L.verticalCols()) {
                int x = cx + FONT / 2 - 2, y = labelTop;
                b.append(text(x, y, colLabels.get(c), "end", "transform=\"rotate(-90 " + x + " " + y + ")\""));
            } else {
                b.append(text(cx, labelTop + FONT, colLabels.get(c), "middle", ""));
            }
        }
        int colLabelH = L.verticalCols() ? (int) Math.ceil(maxLen(colLabels) * CHAR_W) : FONT;
        b.append(text(L.gridX() + L.gridW() / 2, labelTop + colLabelH + PAD + FONT, colAxis, "middle", ""));
        int ax = PAD + FONT, ay = L.gridY() + L.gridH() / 2;
        b.append(text(ax, ay, rowAxis, "middle", "transform=\"rotate(-90 " + ax + " " + ay + ")\""));
        // Legend: a vertical gradient from hi (top) to lo (bottom). SVGs inlined in one HTML page share
        // one id namespace: the id is named after the stops, so only identical gradients share it.
        StringBuilder stops = new StringBuilder();
        for (int i = 0; i <= 20; i++) {
            float v = hi - (hi - lo) * i / 20f;
            stops.append("<stop offset=\"").append(String.format(Locale.ROOT, "%.2f", i / 20.0)).append("\" stop-color=\"").append(rgb(color(v))).append("\"/>\n");
        }
        String id = "scale-" + Integer.toHexString(stops.toString().hashCode());
        b.append("<defs><linearGradient id=\"").append(id).append("\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"1\">\n");
        b.append(stops).append("</linearGradient></defs>\n");
        b.append("<rect x=\"").append(L.legendX()).append("\" y=\"").append(L.legendY()).append("\" width=\"16\" height=\"")
                .append(L.legendH()).append("\" fill=\"url(#").append(id).append(")\" stroke=\"gray\"/>\n");
        for (int tick = 0; tick < 3; tick++) {
            int y = legendTickY(L, tick);
            b.append("<line x1=\"").append(L.legendX() + 16).append("\" y1=\"").append(y).append("\" x2=\"").append(L.legendX() + 20)
                    .append("\" y2=\"").append(y).append("\" stroke=\"black\"/>\n");
            b.append(text(L.legendX() + 22, y + FONT / 2 - 1, fmt(legendValue(tick)), "start", ""));
        }
        if (!legend.isEmpty()) b.append(text(L.legendX(), L.legendY() + L.legendH() + 2 * FONT + PAD / 2, legend, "start", ""));
        b.append("</svg>\n");
        return b.toString();
    }

    private static String text(int x, int y, String s, String anchor, String extra) {
        return "<text x=\"" + x + "\" y=\"" + y + "\" text-anchor=\"" + anchor + "\"" + (extra.isEmpty() ? "" : " " + extra)
                + " xml:space=\"preserve\">" + esc(s) + "</text>\n";
    }

    private static String rgb(int[] c) {
        return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")";
    }

    /** XML text escaping; control characters (not allowed in XML 1.0) become U+FFFD. */
    static String esc(String s) {
        StringBuilder b = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '&' -> b.append("&amp;");
                case '<' -> b.append("&lt;");
                case '>' -> b.append("&gt;");
                case '"' -> b.append("&quot;");
                case '\'' -> b.append("&apos;");
                default -> b.append(c < 0x20 && c != '\t' ? '\uFFFD' : c);
            }
        }
        return b.toString();
    }
}

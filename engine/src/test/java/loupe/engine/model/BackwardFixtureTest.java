package loupe.engine.model;

import loupe.engine.Batch;
import loupe.engine.Compare;
import loupe.engine.Fixtures;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.TestBackends;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.HostTensor;
import loupe.engine.io.SafeTensors;
import loupe.kernels.Backend;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.lang.foreign.Arena;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The GPT-2 backward against llm.c's {@code gpt2_backward}: the loss, HF's shifted loss, the gradient at
 * every hook the fixture holds (through a backward-hook gradient cache), and every parameter gradient in
 * HF layout, with and without hooks attached (the two paths through the norm backward), on every backend
 * of {@link TestBackends}.
 */
class BackwardFixtureTest {
    static Stream<Arguments> cases() {
        return TestBackends.cases(new Object[]{"gpt2-tiny-a"}, new Object[]{"gpt2-tiny-b"});
    }

    @ParameterizedTest(name = "{0}: {1}")
    @MethodSource("cases")
    void gradientsMatchLlmc(TestBackends.Target device, String fixture) {
        Path dir = Fixtures.dir().resolve(fixture);
        try (Backend be = device.open(); Arena arena = Arena.ofConfined(); Model m = Model.load(dir, be); Scope s = new Scope(be)) {
            SafeTensors ref = SafeTensors.open(dir.resolve("expected.safetensors"), arena);
            Transformer t = m.transformer();
            Batch batch = Batch.of(Fixtures.rows(ref.get("tokens")));
            Transformer.Forward f = t.forward(s, batch, Hooks.none(), new Transformer.Options(true, null));
            Loss.Targets targets = Loss.targets(s, batch, Fixtures.rows(ref.get("targets")));
            int T = batch.length();

            // Losses.
            float loss = Loss.of(s, f.logits, targets).mean();
            float shifted = Loss.of(s, f.logits, Loss.shifted(s, batch)).mean();
            assertEquals(ref.get("loss").toFloatArray()[0], loss, 2e-6, "loss");
            assertEquals(ref.get("loss_shifted").toFloatArray()[0], shifted, 2e-6, "loss_shifted");
            Compare.assertClose(fixture + " losses", Loss.of(s, f.logits, targets).losses().toFloatArray(), ref.get("losses").toFloatArray(), 1e-4);

            // Hook gradients, through a gradient cache on every hook point.
            Map<String, Tensor> cache = new LinkedHashMap<>();
            Backward.Result r = Backward.run(s, t, f, Backward.Options.fromLoss(targets).withHooks(new Hooks().cache(n -> true, s, cache)));
            assertEquals(loss, r.loss.mean(), 0f);
            double worstHook = 0;
            int hooks = 0;
            for (String name : ref.names()) {
                if (!name.startsWith("grad.") || name.startsWith("grad.transformer.")) continue;
                String hook = name.substring("grad.".length());
                Tensor got = cache.get(hook);
                assertTrue(got != null, "no gradient cached at " + hook);
                HostTensor want = ref.get(name);
                assertEquals(Arrays.toString(want.shape()), Arrays.toString(Arrays.stream(got.shape()).asLongStream().toArray()), hook);
                float[] out = got.toFloatArray(), exp = want.toFloatArray();
                if (hook.endsWith("hook_pattern")) upperToZero(out, T);   // llm.c never forms those entries
                worstHook = Math.max(worstHook, Compare.assertClose(fixture + " " + name, out, exp, 1e-4));
                hooks++;
            }
            assertTrue(hooks > 20, "compared " + hooks + " hook gradients");
            assertTrue(cache.containsKey("blocks.0.attn.hook_result"), "hook_result gradient fires when hooked");

            // Parameter gradients, from the hooked pass and from a pass without hooks (fused norm backward).
            Backward.Result plain = Backward.run(s, t, f, Backward.Options.fromLoss(targets));
            double worstParam = 0;
            int params = 0;
            for (Backward.Result res : new Backward.Result[]{r, plain}) {
                Map<String, Tensor> hf = res.params.toHf(t.config(), s);
                params = 0;
                for (String name : ref.names()) {
                    if (!name.startsWith("grad.transformer.")) continue;
                    String p = name.substring("grad.".length());
                    Tensor got = hf.get(p);
                    assertTrue(got != null, "no gradient for " + p);
                    HostTensor want = ref.get(name);
                    assertEquals(Arrays.toString(want.shape()), Arrays.toString(Arrays.stream(got.shape()).asLongStream().toArray()), p);
                    worstParam = Math.max(worstParam, Compare.assertClose(fixture + " " + name, got.toFloatArray(), want.toFloatArray(), 1e-4));
                    params++;
                }
                assertEquals(hf.size(), params, "every exported parameter is in the fixture");
            }
            System.out.printf("%s %s backward: loss %.7f (ref %.7f), shifted %.7f; %d hook gradients worst max rel err %.3g; "
                            + "parameter gradients worst %.3g%n", device, fixture, loss, ref.get("loss").toFloatArray()[0], shifted,
                    hooks, worstHook, worstParam);
        }
    }

    /** Zeroes entries with key > query in a {@code [b, h, q, k]} pattern gradient. */
    static void upperToZero(float[] x, int T) {
        for (int base = 0; base < x.length; base += T * T)
            for (int q = 0; q < T; q++)
                for (int k = q + 1; k < T; k++) x[base + q * T + k] = 0f;
    }
}

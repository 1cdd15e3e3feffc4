package loupe.bench.cli;

import loupe.LoupeException;
import loupe.engine.Batch;
import loupe.engine.Model;
import loupe.engine.Scope;
import loupe.engine.Tensor;
import loupe.engine.hooks.Hooks;
import loupe.engine.io.DType;
import loupe.engine.io.SafeTensorsWriter;
import loupe.engine.model.Transformer;
import loupe.kernels.Backend;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Predicate;

/** {@code loupe run}: one forward pass, writing tokens, logits and the chosen hooks to a safetensors file. */
@Command(name = "run", mixinStandardHelpOptions = true,
        description = "Run a forward pass and write tokens, logits and cached hook activations to a safetensors file.")
final class RunCommand implements Runnable {
    @Mixin
    ModelOptions model;

    @ArgGroup(multiplicity = "1")
    Input input;

    static final class Input {
        @Option(names = "--prompt", paramLabel = "TEXT", description = "Text to tokenize (batch 1).")
        String prompt;
        @Option(names = "--tokens", paramLabel = "IDS", description = "Token ids, batches separated by ';' (equal lengths): \"1,2,3;4,5,6\".")
        String tokens;
    }

    @Option(names = "--cache", paramLabel = "PATTERN", description = "Hook name or glob to cache (repeatable; '*' for all).")
    List<String> cache = new ArrayList<>();

    @Option(names = "--out", paramLabel = "FILE", required = true, description = "Output .safetensors file.")
    Path out;

    @Override
    public void run() {
        try (Backend be = model.backend(); Model m = model.load(be); Scope s = new Scope(be); Arena host = Arena.ofConfined()) {
            int[][] ids = input.tokens != null ? ModelOptions.parseTokens(input.tokens)
                    : new int[][]{model.tokenizer(m).encode(input.prompt)};
            Transformer t = m.transformer();
            Predicate<String> wanted = patterns(cache, t.allHookNames());
            Map<String, Tensor> cached = new LinkedHashMap<>();
            Transformer.Forward f = t.forward(s, Batch.of(ids), new Hooks().cache(wanted, s, cached));
            SafeTensorsWriter w = new SafeTensorsWriter();
            int[] flat = Batch.of(ids).flatTokens();
            w.putI32("tokens", new long[]{ids.length, ids[0].length}, flat);
            w.put("logits", DType.F32, shapeOf(f.logits), download(f.logits, host));
            for (Map.Entry<String, Tensor> e : cached.entrySet())
                if (!e.getKey().equals("logits")) w.put(e.getKey(), DType.F32, shapeOf(e.getValue()), download(e.getValue(), host));
            w.metadata("model", String.valueOf(model.modelPath()));
            w.write(out);
            System.out.println("wrote " + out + ": tokens " + Arrays.toString(new int[]{ids.length, ids[0].length})
                    + ", logits, and " + cached.size() + " hook tensors");
        }
    }

    /** A predicate matching any of the patterns; a pattern matching no hook is an error listing near names. */
    static Predicate<String> patterns(List<String> patterns, List<String> names) {
        List<Predicate<String>> ps = new ArrayList<>();
        for (String p : patterns) {
            Predicate<String> g = Hooks.glob(p);
            if (names.stream().noneMatch(g))
                throw new LoupeException("--cache " + p + " matches no hook; nearest: " + String.join(", ", Hooks.nearest(p, names, 4)));
            ps.add(g);
        }
        return (Hooks.Selector) n -> ps.stream().anyMatch(p -> p.test(n));
    }

    static long[] shapeOf(Tensor t) {
        return Arrays.stream(t.shape()).asLongStream().toArray();
    }

    static MemorySegment download(Tensor t, Arena arena) {
        MemorySegment m = arena.allocate(t.numel() * 4, 64);
        t.download(m);
        return m;
    }
}

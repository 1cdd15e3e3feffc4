package loupe.engine.tokenizer;

import loupe.LoupeException;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.OptionalInt;
import java.util.stream.Stream;

/** Finds and loads the right {@link Tokenizer} for a model's files. */
public final class Tokenizers {
    /** What {@link #load} looks for in a directory, in order of preference. */
    static final String LOOKED_FOR = "tokenizer.json, vocab.json + merges.txt, tokenizer.model, tokenizer.bin or tok*.bin";

    private static volatile Tokenizer gpt2;

    private Tokenizers() {
    }

    /**
     * GPT-2's standard tokenizer (r50k_base) through JTokkit, which bundles the vocabulary;
     * {@code <|endoftext|>} = 50256 is its EOS (and BOS).
     */
    public static Tokenizer gpt2() {
        Tokenizer t = gpt2;
        if (t == null) gpt2 = t = new TiktokenGpt2();
        return t;
    }

    /**
     * Loads a tokenizer from {@code p}: a model directory or a tokenizer file.
     *
     * <p>A directory: {@code tokenizer.json} if present, else {@code vocab.json} + {@code merges.txt},
     * else {@code tokenizer.model}, else {@code tokenizer.bin} or a {@code tok*.bin}. A file goes by its
     * name: {@code *.json} (a HF tokenizer.json; a {@code vocab.json} with a {@code merges.txt} beside
     * it is GPT-2's pair), {@code *.model} (SentencePiece), {@code *.bin} (llama2.c).
     *
     * @param vocabSizeHint the model's vocabulary size, needed only by llama2.c's tokenizer.bin, which
     *                      does not store it (without it the file is read to its end)
     */
    public static Tokenizer load(Path p, OptionalInt vocabSizeHint) {
        if (Files.isDirectory(p)) {
            return find(p, vocabSizeHint).orElseThrow(() -> new LoupeException(
                    p + ": no tokenizer found in this directory (looked for " + LOOKED_FOR + ")"));
        }
        if (!Files.isRegularFile(p)) throw new LoupeException(p + ": tokenizer file not found");
        String name = p.getFileName().toString();
        if (name.endsWith(".json")) {
            Path merges = p.resolveSibling("merges.txt");
            if (name.equals("vocab.json") && Files.isRegularFile(merges)) return ByteLevelBpe.fromVocabAndMerges(p, merges);
            return fromTokenizerJson(p);
        }
        if (name.endsWith(".txt") && name.startsWith("merges")) {
            Path vocab = p.resolveSibling("vocab.json");
            if (Files.isRegularFile(vocab)) return ByteLevelBpe.fromVocabAndMerges(vocab, p);
        }
        if (name.endsWith(".model")) return SentencePieceBpe.fromModelFile(p);
        if (name.endsWith(".bin")) return Llama2cTokenizer.load(p, vocabSizeHint);
        throw new LoupeException(p + ": unknown tokenizer file type (expected tokenizer.json, vocab.json + merges.txt,"
                + " a SentencePiece .model or a llama2.c .bin)");
    }

    /** {@link #load(Path, OptionalInt)} without a vocabulary size hint. */
    public static Tokenizer load(Path p) {
        return load(p, OptionalInt.empty());
    }

    /**
     * A HF {@code tokenizer.json}: byte-level BPE ({@link ByteLevelBpe}) or SentencePiece-style BPE
     * ({@link SentencePieceBpe}), told apart by the model's {@code byte_fallback} flag and by its
     * normalizer / pre-tokenizer.
     */
    public static Tokenizer fromTokenizerJson(Path file) {
        HfTokenizerJson j = HfTokenizerJson.read(file);
        Object pre = j.root.get("pre_tokenizer");
        if (hasType(pre, "ByteLevel")) return ByteLevelBpe.fromHf(j);
        if (j.flag("byte_fallback") || hasType(pre, "Metaspace") || hasType(j.root.get("normalizer"), "Prepend")) {
            return SentencePieceBpe.fromHf(j);
        }
        throw new LoupeException(file + ": cannot tell the BPE flavour (no ByteLevel pre-tokenizer, no byte_fallback,"
                + " no Metaspace); " + HfTokenizerJson.SUPPORTED);
    }

    private static final int GPT2_VOCAB = 50257;

    /**
     * The tokenizer for a model, looked for in {@code weightsFileOrDir} (a directory) or beside it
     * (a weights file), as {@link #load} does for a directory. When none is there, a GPT-2 model
     * ({@code isGpt2}) falls back to {@link #gpt2()}; any other model is an error telling the user to
     * pass {@code --tokenizer PATH}. The fallback needs a vocabulary of at least GPT-2's 50257 ids
     * ({@code vocabSizeHint}): a small GPT-2-shaped model (a test fixture) gets the error too.
     */
    public static Tokenizer forModel(Path weightsFileOrDir, boolean isGpt2, OptionalInt vocabSizeHint) {
        Path dir = Files.isDirectory(weightsFileOrDir) ? weightsFileOrDir : weightsFileOrDir.toAbsolutePath().getParent();
        Optional<Tokenizer> t = dir == null ? Optional.empty() : find(dir, vocabSizeHint);
        if (t.isPresent()) return t.get();
        // The standard GPT-2 encoding only fits a model with its 50257 ids (or more: llm.c pads the vocabulary).
        boolean fits = vocabSizeHint.isEmpty() || vocabSizeHint.getAsInt() >= GPT2_VOCAB;
        if (isGpt2 && fits) return gpt2();
        throw new LoupeException(weightsFileOrDir + ": no tokenizer found " + (Files.isDirectory(weightsFileOrDir) ? "in" : "beside")
                + " the model (looked for " + LOOKED_FOR + " in " + dir + ")"
                + (isGpt2 ? "; the standard GPT-2 encoding has " + GPT2_VOCAB + " ids and this model " + vocabSizeHint.getAsInt() : "")
                + "; pass --tokenizer PATH (or token ids)");
    }

    /** {@link #forModel(Path, boolean, OptionalInt)} without a vocabulary size hint. */
    public static Tokenizer forModel(Path weightsFileOrDir, boolean isGpt2) {
        return forModel(weightsFileOrDir, isGpt2, OptionalInt.empty());
    }

    private static Optional<Tokenizer> find(Path dir, OptionalInt vocabSizeHint) {
        Path json = dir.resolve("tokenizer.json");
        if (Files.isRegularFile(json)) return Optional.of(fromTokenizerJson(json));
        Path vocab = dir.resolve("vocab.json"), merges = dir.resolve("merges.txt");
        if (Files.isRegularFile(vocab) && Files.isRegularFile(merges)) return Optional.of(ByteLevelBpe.fromVocabAndMerges(vocab, merges));
        Path model = dir.resolve("tokenizer.model");
        if (Files.isRegularFile(model)) return Optional.of(SentencePieceBpe.fromModelFile(model));
        Path bin = dir.resolve("tokenizer.bin");
        if (Files.isRegularFile(bin)) return Optional.of(Llama2cTokenizer.load(bin, vocabSizeHint));
        List<Path> toks;
        try (Stream<Path> s = Files.list(dir)) {
            toks = s.filter(f -> {
                String n = f.getFileName().toString();
                return n.startsWith("tok") && n.endsWith(".bin") && Files.isRegularFile(f);
            }).sorted().toList();
        } catch (IOException e) {
            throw new LoupeException(dir + ": cannot list the directory: " + e.getMessage(), e);
        }
        if (toks.size() > 1) {
            throw new LoupeException(dir + ": more than one llama2.c tokenizer " + toks.stream().map(f -> f.getFileName().toString()).toList()
                    + "; pass --tokenizer PATH to choose");
        }
        return toks.isEmpty() ? Optional.empty() : Optional.of(Llama2cTokenizer.load(toks.get(0), vocabSizeHint));
    }

    /** Whether {@code node} or anything nested in it has {@code "type": type} (e.g. a ByteLevel inside a Sequence). */
    private static boolean hasType(Object node, String type) {
        if (node instanceof Map<?, ?> m) {
            if (type.equals(m.get("type"))) return true;
            for (Object v : m.values()) if (hasType(v, type)) return true;
        } else if (node instanceof List<?> l) {
            for (Object v : l) if (hasType(v, type)) return true;
        }
        return false;
    }
}

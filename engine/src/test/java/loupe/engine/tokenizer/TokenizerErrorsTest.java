package loupe.engine.tokenizer;

import loupe.LoupeException;
import loupe.engine.Fixtures;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.OptionalInt;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Bad input gives one clear LoupeException that names the file and the problem. */
class TokenizerErrorsTest {
    @TempDir
    Path tmp;

    private static void assertMentions(LoupeException e, String... parts) {
        for (String p : parts) assertTrue(e.getMessage().contains(p), () -> "message lacks \"" + p + "\": " + e.getMessage());
    }

    @Test
    void truncatedTokenizerBin() throws IOException {
        byte[] full = Files.readAllBytes(Fixtures.dir().resolve("stories260K").resolve("tok512.bin"));
        Path cut = Files.write(tmp.resolve("tok512.bin"), Arrays.copyOf(full, full.length - 5));
        assertMentions(assertThrows(LoupeException.class, () -> Llama2cTokenizer.load(cut, OptionalInt.of(512))),
                cut.toString(), "truncated", "entry 511");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(cut)), cut.toString(), "truncated");
        // Asking for more entries than the file holds is the same problem.
        Path whole = Files.write(tmp.resolve("tok.bin"), full);
        assertMentions(assertThrows(LoupeException.class, () -> Llama2cTokenizer.load(whole, OptionalInt.of(600))),
                whole.toString(), "truncated", "entry 512 of 600");
        Path empty = Files.write(tmp.resolve("empty.bin"), new byte[2]);
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(empty)), empty.toString(), "truncated");
    }

    @Test
    void tokenizerJsonThatIsNotJson() throws IOException {
        Path f = Files.writeString(tmp.resolve("tokenizer.json"), "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,}");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(f)), f.toString(), "invalid JSON");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(tmp)), f.toString(), "invalid JSON");
    }

    @Test
    void tokenizerJsonWithUnsupportedModelType() throws IOException {
        Path f = Files.writeString(tmp.resolve("tokenizer.json"),
                "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}, \"pre_tokenizer\": null}");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(f)),
                f.toString(), "WordPiece", "not supported", "BPE", "ByteLevel", "byte_fallback");
        Files.writeString(f, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                + " \"pre_tokenizer\": {\"type\": \"Whitespace\"}}");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(f)), f.toString(), "supported");
    }

    @Test
    void mergeWithUnknownToken() throws IOException {
        Path vocab = Files.writeString(tmp.resolve("vocab.json"), "{\"a\": 0, \"b\": 1}");
        Path merges = Files.writeString(tmp.resolve("merges.txt"), "#version: 0.2\na b\n");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(tmp)),
                vocab.toString(), "merge 1", "a b", "not in the vocabulary");
        Files.writeString(merges, "#version: 0.2\nab\n");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(tmp)), merges.toString(), "line 2");
    }

    @Test
    void directoryWithoutTokenizer() throws IOException {
        Files.writeString(tmp.resolve("config.json"), "{}");
        LoupeException e = assertThrows(LoupeException.class, () -> Tokenizers.load(tmp));
        assertMentions(e, tmp.toString(), "tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "tokenizer.bin", "tok*.bin");
        // A non-GPT-2 model without tokenizer files: tell the user what to pass.
        Path weights = Files.writeString(tmp.resolve("model.safetensors"), "");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.forModel(weights, false)),
                weights.toString(), "tokenizer.json", "--tokenizer PATH");
        // A GPT-2 model whose vocabulary is not GPT-2's: the standard encoding would give ids it does not have.
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.forModel(weights, true, java.util.OptionalInt.of(101))),
                weights.toString(), "50257", "101", "--tokenizer PATH");
        assertEquals(Tokenizers.gpt2(), Tokenizers.forModel(weights, true, java.util.OptionalInt.of(50304)));
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(tmp.resolve("missing.json"))),
                "missing.json", "not found");
        Path odd = Files.writeString(tmp.resolve("vocab.txt"), "a\n");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(odd)), odd.toString(), "unknown tokenizer file type");
    }

    @Test
    void tokenizerModelThatIsNotProtobuf() throws IOException {
        // Field 1, length 16, but the file ends after 3 bytes of it.
        Path cut = Files.write(tmp.resolve("tokenizer.model"), new byte[] {0x0A, 0x10, 0x0A, 0x01, 'a'});
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(cut)), cut.toString(), "not a valid SentencePiece model");
        Path text = Files.writeString(tmp.resolve("other.model"), "this is not a model");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.load(text)), text.toString());
    }

    @Test
    void idOutOfRange() {
        Tokenizer t = Llama2cTokenizer.load(Fixtures.dir().resolve("stories260K").resolve("tok512.bin"), OptionalInt.of(512));
        assertMentions(assertThrows(LoupeException.class, () -> t.decode(new int[] {5, 512})), "tok512.bin", "512", "out of range");
        assertMentions(assertThrows(LoupeException.class, () -> t.tokenString(-1)), "out of range");
        assertMentions(assertThrows(LoupeException.class, () -> Tokenizers.gpt2().decode(new int[] {50257})), "out of range");
    }
}

"""An intent router: sends a request to the task that handles it.

    taskhost plugins add plugins/scripts/intent_router.py --name intent-router

It embeds the request's text and each intent's example phrases with MiniLM
(all-MiniLM-L6-v2) through `host.inference`, where the host batches the
call with other tasks' calls; picks the intent whose nearest example is
closest by cosine similarity; and submits that intent's plugin as a child
task, so the request goes on as a flow.

Input: `{"text": "..."}`. Output: `{"intent", "score", "task"}` (the child
task's id), or `{"intent": null, "score"}` when no intent is near enough.

Needs, from the operator: the model granted to this plugin as `minilm` (a
models file entry with `plugins = ["intent-router"]`), and the model's
WordPiece vocabulary readable at /models/minilm/vocab.txt (a read-only
`[[dirs]]` grant in the plugin's manifest). The tokenizer below is BERT's
uncased one, as the `embed` plugin's (plugins/embed/src/tokenizer.rs).
"""

import array
import json
import unicodedata

#: What the router knows: each intent's handler plugin and example phrases.
INTENTS = {
    "refund": {
        "plugin": "refunds",
        "examples": ["I want my money back", "please refund my order", "I was charged twice, return the payment"],
    },
    "shipping": {
        "plugin": "shipping",
        "examples": ["where is my package", "track my delivery", "when will my parcel arrive"],
    },
    "cancel": {
        "plugin": "cancellations",
        "examples": ["cancel my subscription", "I want to stop my plan", "close my account for good"],
    },
}
#: Below this similarity no intent is chosen.
THRESHOLD = 0.3
MODEL = "minilm"
VOCAB = "/models/minilm/vocab.txt"
MAX_TOKENS = 128
CLS, SEP, UNK = "[CLS]", "[SEP]", "[UNK]"


def run(input):
    request = input.json()
    text = request.get("text") if isinstance(request, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise host.PermanentError('the input must be {"text": "..."} with some text')
    phrases = [(name, example) for name, intent in INTENTS.items() for example in intent["examples"]]
    vectors = embed([text] + [example for _, example in phrases])
    query = vectors[0]
    best = {}
    for (name, _), vector in zip(phrases, vectors[1:]):
        score = sum(a * b for a, b in zip(query, vector))
        best[name] = max(best.get(name, -1.0), score)
    intent, score = max(best.items(), key=lambda item: item[1])
    host.log("info", "scores", json.dumps({name: round(s, 3) for name, s in best.items()}))
    if score < THRESHOLD:
        return {"intent": None, "score": round(score, 4)}
    child = host.queue.submit(INTENTS[intent]["plugin"], json.dumps({"text": text, "intent": intent}))
    return {"intent": intent, "score": round(score, 4), "task": child}


def embed(texts):
    """Unit-length sentence vectors of `texts`: one model call for all."""
    vocab = load_vocab()
    ids = [encode(text, vocab) for text in texts]
    # Padded to a multiple of 16 tokens: calls of the same length, from
    # any task, share a batch on the host.
    seq = max(16, -(-max(len(row) for row in ids) // 16) * 16)
    input_ids, mask = array.array("q"), array.array("q")
    for row in ids:
        input_ids.extend(row + [0] * (seq - len(row)))
        mask.extend([1] * len(row) + [0] * (seq - len(row)))
    shape = [len(ids), seq]
    hidden = host.inference.run(
        MODEL,
        [
            host.Tensor("input_ids", input_ids, "i64", shape),
            host.Tensor("attention_mask", mask, "i64", shape),
            host.Tensor("token_type_ids", array.array("q", bytes(8 * len(input_ids))), "i64", shape),
        ],
    )[0]
    dims = hidden.shape[-1]
    vectors = []
    for r, row in enumerate(ids):
        # The mean over the real tokens, then unit length.
        total = [0.0] * dims
        for t in range(len(row)):
            at = (r * seq + t) * dims
            for d in range(dims):
                total[d] += hidden.data[at + d]
        norm = max(sum(v * v for v in total) ** 0.5, 1e-12)
        vectors.append([v / norm for v in total])
    return vectors


def load_vocab():
    """The vocabulary: a token per line, its id the line's number."""
    try:
        with open(VOCAB, encoding="utf-8") as file:
            return {line.rstrip("\n"): i for i, line in enumerate(file)}
    except PermissionError:
        raise host.PermanentError(f"{VOCAB} is not granted: give the plugin a read-only [[dirs]] grant of the model's directory")


def encode(text, vocab):
    """Token ids: `[CLS]`, WordPiece pieces of each word, `[SEP]`."""
    ids = [vocab[CLS]]
    for word in words(text):
        ids.extend(wordpiece(word, vocab))
    return ids[: MAX_TOKENS - 1] + [vocab[SEP]]


def words(text):
    """Lowercased, accents stripped, split on spaces and punctuation."""
    found, word = [], []
    for c in unicodedata.normalize("NFD", text.lower()):
        category = unicodedata.category(c)
        if category == "Mn" or c in "\0\ufffd" or (category == "Cc" and not c.isspace()):
            continue
        if c.isspace():
            if word:
                found.append("".join(word))
                word = []
        elif is_punctuation(c) or is_cjk(c):
            if word:
                found.append("".join(word))
                word = []
            found.append(c)
        else:
            word.append(c)
    if word:
        found.append("".join(word))
    return found


def wordpiece(word, vocab):
    """Greedy longest match, `##` on every piece but the first."""
    if len(word) > 100:
        return [vocab[UNK]]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(vocab[piece])
                break
            end -= 1
        else:
            return [vocab[UNK]]
        start = end
    return pieces


def is_punctuation(c):
    o = ord(c)
    return (
        (c.isascii() and not c.isalnum() and not c.isspace() and 33 <= o <= 126)
        or 0xA1 <= o <= 0xBF
        or 0x2010 <= o <= 0x2027
        or 0x2030 <= o <= 0x205E
        or 0x3001 <= o <= 0x3003
        or 0x3008 <= o <= 0x3011
    )


def is_cjk(c):
    o = ord(c)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x20000 <= o <= 0x2A6DF
        or 0xF900 <= o <= 0xFAFF
        or 0x2F800 <= o <= 0x2FA1F
    )

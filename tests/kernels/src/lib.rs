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
    values.iter().enumerate().fold(0u64, |acc, (i, &v)| {
        acc.wrapping_add((i as u64 + 1).wrapping_mul(u64::from(v)))
    })
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
}

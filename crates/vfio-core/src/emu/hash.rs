//! The device's hash: BLAKE3 (the `blake3` crate, which picks SSE4.1/AVX2/
//! AVX-512 at run time). It is only ever compared between emulated devices,
//! so it needs to be strong (equal hashes mean equal bytes) and fast enough
//! that hashing every region on both sides never limits a migration; the
//! hand-written SHA-256 it replaces ran at ~150 MiB/s.

pub use blake3::Hasher;

/// The 32-byte digest of `h`.
pub fn finish(h: &Hasher) -> [u8; 32] {
    *h.finalize().as_bytes()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake3_known_answers() {
        // Official test vectors (input bytes i % 251).
        let input: Vec<u8> = (0..1025u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(hex(&finish(&Hasher::new())), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        let mut h = Hasher::new();
        h.update(&input[..1]);
        assert_eq!(hex(&finish(&h)), "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213");
        // Split updates give the same answer as one.
        let mut a = Hasher::new();
        a.update(&input);
        let mut b = Hasher::new();
        b.update(&input[..7]);
        b.update(&input[7..]);
        assert_eq!(finish(&a), finish(&b));
        assert_eq!(hex(&finish(&a)), "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444");
    }
}

//! `blake3Digest`: the standard BLAKE3 hash of a byte range, spread over
//! threads. The migration demo's proof hashes all guest RAM on the
//! destination before its vCPU starts, so that hashing is part of the
//! downtime; one core hashing SHA-256 took most of a 300 ms limit for
//! 256 MiB. BLAKE3 is a tree hash, so pieces hashed on different threads
//! combine into exactly the hash one thread would compute: the result is
//! checkable against any BLAKE3 implementation.

use crate::error::{blocking, js_error, Blocking};
use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};
use blake3::{Hasher, CHUNK_LEN};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::atomic::{AtomicUsize, Ordering};
use vmm_sys::Error as NativeError;

/// Bytes a thread takes at a time: large enough that BLAKE3's SIMD paths
/// run at full width and the per-piece cost vanishes, small enough that
/// threads finish together (256 pieces for 256 MiB).
const PIECE: usize = 1 << 20;

/// Threads when the caller names none: a digest on a stopped VM has the
/// machine to itself, but past a few cores memory bandwidth is the limit.
const MAX_DEFAULT_THREADS: usize = 8;

/// Largest thread count a caller may ask for.
const MAX_THREADS: u32 = 64;

/// BLAKE3 of `input` with up to `threads` threads, in pieces of `piece`
/// bytes (a power of two, at least one chunk).
fn hash_with(input: &[u8], threads: usize, piece: usize) -> blake3::Hash {
    debug_assert!(piece.is_power_of_two() && piece >= CHUNK_LEN);
    if threads <= 1 || input.len() <= piece {
        return blake3::hash(input);
    }
    let cvs = piece_cvs(input, threads, piece);
    let (l, r) = split(input.len());
    merge_subtrees_root(&subtree(&cvs, 0, l, piece), &subtree(&cvs, l, r, piece), Mode::Hash)
}

/// How BLAKE3 splits a node of `len` bytes (more than one chunk): a left
/// subtree of the largest power of two of chunks that leaves a non-empty
/// right side, and the rest.
fn split(len: usize) -> (usize, usize) {
    let left = left_subtree_len(len as u64) as usize;
    (left, len - left)
}

/// Chaining value of the subtree at `offset` of `len` bytes, from the
/// pieces' values. Every split of a range longer than a piece falls on a
/// piece boundary (`split` gives a power of two no smaller than half the
/// range, and pieces are a power of two), so each leaf is one whole piece.
fn subtree(cvs: &[ChainingValue], offset: usize, len: usize, piece: usize) -> ChainingValue {
    if len <= piece {
        return cvs[offset / piece];
    }
    let (l, r) = split(len);
    merge_subtrees_non_root(&subtree(cvs, offset, l, piece), &subtree(cvs, offset + l, r, piece), Mode::Hash)
}

/// The non-root chaining value of every piece of `input`, with `threads`
/// threads taking the next piece until none is left.
fn piece_cvs(input: &[u8], threads: usize, piece: usize) -> Vec<ChainingValue> {
    let count = input.len().div_ceil(piece);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= count {
                return done;
            }
            let bytes = &input[i * piece..input.len().min((i + 1) * piece)];
            done.push((i, Hasher::new().set_input_offset((i * piece) as u64).update(bytes).finalize_non_root()));
        }
    };
    let mut cvs = vec![[0u8; 32]; count];
    std::thread::scope(|s| {
        // This thread works too, so `threads` counts it.
        let helpers: Vec<_> = (1..threads.min(count)).map(|_| s.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        for (i, cv) in all {
            cvs[i] = cv;
        }
    });
    cvs
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_DEFAULT_THREADS)
}

/// BLAKE3 (hex, 64 digits) of `bytes`: the standard unkeyed hash, computed
/// on a worker thread and `threads - 1` more (default: the machine's cores,
/// at most 8). The typed array is held until the Promise settles; nothing
/// may write it meanwhile (guest RAM: the VM is stopped), or the digest
/// describes no single moment of it.
#[napi(ts_return_type = "Promise<string>")]
pub fn blake3_digest(env: Env, bytes: Uint8Array, threads: Option<u32>) -> Result<AsyncTask<Blocking<String>>> {
    const CALL: &str = "blake3Digest";
    let threads = match threads {
        None => default_threads(),
        Some(n) if (1..=MAX_THREADS).contains(&n) => n as usize,
        Some(n) => {
            let e = NativeError::invalid(CALL, format!("{CALL}: argument threads = {n}"), &format!("must be 1..{MAX_THREADS}"));
            return Err(js_error(&env, &e));
        }
    };
    Ok(blocking(move || Ok(hash_with(&bytes, threads, PIECE).to_hex().to_string())))
}

/// The sum (mod 2^32) of `bytes` as little-endian u32 words, a trailing
/// partial word ignored: the microVM workload's checksum of its region.
fn word_sum(bytes: &[u8]) -> u32 {
    bytes.chunks_exact(4).fold(0u32, |s, w| s.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
}

/// `wordSum`: the workload's region checksum off the event loop. A local
/// migration's source takes it with the guest stopped, in the downtime,
/// where JavaScript's loop over a working set cost tens of ms.
#[napi(ts_return_type = "Promise<number>")]
pub fn word_sum_of(bytes: Uint8Array) -> AsyncTask<Blocking<u32>> {
    blocking(move || Ok(word_sum(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_sum_wraps_and_is_little_endian() {
        assert_eq!(word_sum(&[1, 0, 0, 0, 0, 1, 0, 0, 9]), 0x101, "the trailing byte is no word");
        assert_eq!(word_sum(&[0xff; 8]), 0xffff_fffe, "wraps mod 2^32");
        assert_eq!(word_sum(&[]), 0);
    }

    fn input(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn equals_one_thread_blake3_across_piece_boundaries() {
        // Small pieces put every length below at or around piece and tree
        // boundaries: one chunk, one piece, 2^k pieces, 2^k pieces plus a byte.
        for piece in [CHUNK_LEN, 4 * CHUNK_LEN] {
            for pieces in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17] {
                for extra in [-1isize, 0, 1, 513] {
                    let len = (pieces * piece).saturating_add_signed(extra);
                    let data = input(len);
                    for threads in [1, 2, 3, 8] {
                        assert_eq!(hash_with(&data, threads, piece), blake3::hash(&data), "len {len} piece {piece} threads {threads}");
                    }
                }
            }
        }
        for len in [0, 1, CHUNK_LEN - 1, CHUNK_LEN] {
            assert_eq!(hash_with(&input(len), 4, CHUNK_LEN), blake3::hash(&input(len)));
        }
    }

    #[test]
    fn official_vector_through_the_threaded_path() {
        // BLAKE3's published vector for 1025 bytes of i % 251, hashed as two 1 KiB pieces.
        assert_eq!(
            hash_with(&input(1025), 2, CHUNK_LEN).to_hex().as_str(),
            "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"
        );
    }

    #[test]
    fn one_byte_changes_the_digest() {
        let mut data = input(5 * PIECE + 17);
        let before = hash_with(&data, 3, PIECE);
        data[3 * PIECE + 5] ^= 1;
        assert_ne!(hash_with(&data, 3, PIECE), before);
        assert_eq!(hash_with(&data, 3, PIECE), blake3::hash(&data));
    }
}

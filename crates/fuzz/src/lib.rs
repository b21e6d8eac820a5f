//! The native RAM decoder as the harnesses see it: vmm-native's
//! `ram/decode.rs` and `ram/mem.rs` compiled in here as they are (vmm-native
//! is a napi cdylib, which no other binary can link), around an in-memory
//! socket that hands the stream over in chunks the fuzzer chooses.
#![deny(missing_docs)]

/// What decode.rs expects of `crate::error`.
pub mod error {
    /// A native failure; the in-memory socket never fails.
    pub type VResult<T> = Result<T, String>;
}

// At the root, where decode.rs finds them as `super::mem` and `super::sock`.
#[allow(missing_docs, dead_code)]
#[path = "../../vmm-native/src/ram/decode.rs"]
pub mod decode;
#[allow(missing_docs, dead_code)]
#[path = "../../vmm-native/src/ram/mem.rs"]
pub mod mem;

/// vmm-native's `ram` module, its socket replaced.
pub mod ram {
    pub use super::{decode, mem, sock};
}

/// The bytes of a stream arriving in chunks: each peek sees one more
/// chunk than the last, as a socket fills while its reader works.
pub mod sock {
    use crate::error::VResult;
    use std::cell::Cell;

    /// A socket over fixed bytes.
    pub struct Sock {
        data: Vec<u8>,
        /// Chunk sizes to cycle through (never empty, none zero).
        chunks: Vec<usize>,
        next: Cell<usize>,
        arrived: Cell<usize>,
        taken: Cell<usize>,
    }

    impl Sock {
        /// `data` arriving `chunks[0]`, then `chunks[1]`, ... bytes at a time.
        pub fn new(data: Vec<u8>, chunks: Vec<usize>) -> Sock {
            assert!(!chunks.is_empty() && chunks.iter().all(|&c| c > 0));
            Sock { data, chunks, next: Cell::new(0), arrived: Cell::new(0), taken: Cell::new(0) }
        }

        /// Bytes taken so far.
        pub fn taken(&self) -> usize {
            self.taken.get()
        }

        /// What recv(MSG_PEEK) would copy; 0 only at the end of the stream.
        pub fn peek(&self, buf: &mut [u8], _after: u64) -> VResult<usize> {
            let i = self.next.get();
            self.next.set(i + 1);
            let arrived = (self.arrived.get() + self.chunks[i % self.chunks.len()]).min(self.data.len());
            self.arrived.set(arrived);
            let have = &self.data[self.taken.get()..arrived];
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
            Ok(n)
        }

        /// Takes `n` bytes a peek showed.
        pub fn discard(&self, n: usize, _scratch: &mut [u8], _after: u64) -> VResult<()> {
            let t = self.taken.get() + n;
            if t > self.arrived.get() {
                return Err(format!("discard of {n} bytes past what arrived"));
            }
            self.taken.set(t);
            Ok(())
        }

        /// Whether every byte has arrived.
        pub fn peer_done(&self) -> bool {
            self.arrived.get() == self.data.len()
        }
    }

    /// The decoder's view of it, as vmm-native's socket gives it (ram/sock.rs):
    /// a peek that the parse looks at, then the bytes it used taken.
    impl crate::decode::Source for Sock {
        fn take(&self, after: u64, f: &mut dyn FnMut(&[u8]) -> usize) -> VResult<usize> {
            let mut buf = vec![0u8; self.data.len().clamp(1, crate::decode::PEEK_SIZE)];
            let n = self.peek(&mut buf, after)?;
            if n == 0 {
                return Ok(0);
            }
            let used = f(&buf[..n]);
            if used > 0 {
                self.discard(used, &mut buf, after)?;
            }
            Ok(n)
        }

        fn wait_more(&self, have: usize, after: u64) -> VResult<bool> {
            // Each peek lets one more chunk arrive: only the end stops it.
            if self.peer_done() {
                let mut buf = vec![0u8; self.data.len().clamp(1, crate::decode::PEEK_SIZE)];
                if self.peek(&mut buf, after)? == have {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

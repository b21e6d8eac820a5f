//! The destination's page records, parsed off the JavaScript thread.
//!
//! The bytes are peeked from the socket, and only records that are checked
//! and applied are taken from it: anything else (an unsupported flag,
//! MEM_SIZE, an unknown block, a page past its block, a bad fill byte)
//! stays in the socket untouched for RamLoader (vmm/ram/load.ts), which
//! reads it through the stream and raises the same error it always would.
//! A record whose head is checked but whose payload has not all arrived is
//! taken as far as it goes and finished from later bytes (`Pending`).

use super::mem::{GuestMem, PageBits, PAGE};
use crate::error::VResult;

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const SUPPORTED: u64 = FLAG_ZERO | FLAG_MEM_SIZE | FLAG_PAGE | FLAG_EOS | FLAG_CONTINUE;

pub struct Block<'a> {
    pub mem: GuestMem,
    pub name: &'a [u8],
    /// Where to record the pages applied, if the caller keeps count.
    pub received: Option<PageBits>,
}

impl Block<'_> {
    fn applied(&self, offset: usize) {
        if let Some(r) = self.received {
            r.set(offset);
        }
    }
}

/// A checked record whose payload is partly in guest memory already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub block: usize,
    pub offset: usize,
    pub zero: bool,
    /// Payload bytes already written (always 0 for a zero page).
    pub got: usize,
    /// Stream offset of the record's first byte.
    pub at: u64,
}

#[derive(Debug, Default)]
pub struct State {
    /// The last block named (RamLoader.last).
    pub last: Option<usize>,
    pub pending: Option<Pending>,
    pub normal: u64,
    pub zero: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Everything usable was taken; more bytes are needed.
    More,
    /// EOS taken: the section's records are done.
    Eos,
    /// The next record is for RamLoader (not taken).
    Stop,
    /// The pending zero page's fill byte is not 0.
    ZeroFill { ch: u8 },
}

fn find(blocks: &[Block], name: &[u8]) -> Option<usize> {
    blocks.iter().position(|b| b.name == name)
}

fn finish_pending(buf: &[u8], blocks: &[Block], st: &mut State) -> (usize, Step) {
    let Some(mut p) = st.pending else { return (0, Step::More) };
    if buf.is_empty() {
        return (0, Step::More);
    }
    let mem = blocks[p.block].mem;
    if p.zero {
        if buf[0] != 0 {
            return (0, Step::ZeroFill { ch: buf[0] });
        }
        mem.zero_page(p.offset);
        blocks[p.block].applied(p.offset);
        st.zero += 1;
        st.pending = None;
        return (1, Step::More);
    }
    let take = (PAGE - p.got).min(buf.len());
    mem.write(p.offset + p.got, &buf[..take]);
    p.got += take;
    if p.got == PAGE {
        blocks[p.block].applied(p.offset);
        st.normal += 1;
        st.pending = None;
    } else {
        st.pending = Some(p);
    }
    (take, Step::More)
}

/// Applies the records at the start of `buf` (whose first byte is at stream
/// offset `base`); resolves how many bytes were taken and why it stopped.
pub fn parse(buf: &[u8], base: u64, blocks: &[Block], st: &mut State) -> (usize, Step) {
    let (mut pos, step) = finish_pending(buf, blocks, st);
    if step != Step::More || st.pending.is_some() {
        return (pos, step);
    }
    loop {
        let rest = &buf[pos..];
        if rest.len() < 8 {
            return (pos, Step::More);
        }
        let word = u64::from_be_bytes(rest[..8].try_into().unwrap());
        let flags = word & 0xfff;
        let kind = flags & !FLAG_CONTINUE;
        if flags & !SUPPORTED != 0 || word >> 53 != 0 {
            return (pos, Step::Stop);
        }
        if kind == FLAG_EOS && flags == FLAG_EOS {
            return (pos + 8, Step::Eos);
        }
        if kind != FLAG_PAGE && kind != FLAG_ZERO {
            return (pos, Step::Stop);
        }
        let named = flags & FLAG_CONTINUE == 0;
        let (bi, head) = if named {
            if rest.len() < 9 || rest.len() < 9 + rest[8] as usize {
                return (pos, Step::More);
            }
            let n = rest[8] as usize;
            match find(blocks, &rest[9..9 + n]) {
                Some(b) => (b, 9 + n),
                None => return (pos, Step::Stop),
            }
        } else {
            match st.last {
                Some(b) => (b, 8),
                None => return (pos, Step::Stop),
            }
        };
        let addr = (word - flags) as usize;
        let mem = blocks[bi].mem;
        if addr > mem.len() || mem.len() - addr < PAGE {
            return (pos, Step::Stop);
        }
        let zero = kind == FLAG_ZERO;
        let body = if zero { 1 } else { PAGE };
        if rest.len() >= head + body {
            if zero {
                if rest[head] != 0 {
                    return (pos, Step::Stop);
                }
                mem.zero_page(addr);
                st.zero += 1;
            } else {
                mem.write(addr, &rest[head..head + PAGE]);
                st.normal += 1;
            }
            blocks[bi].applied(addr);
            if named {
                st.last = Some(bi);
            }
            pos += head + body;
            continue;
        }
        // The head is checked; the payload is finished from later bytes.
        let got = rest.len() - head;
        if !zero {
            mem.write(addr, &rest[head..]);
        }
        if named {
            st.last = Some(bi);
        }
        st.pending = Some(Pending { block: bi, offset: addr, zero, got, at: base + pos as u64 });
        return (buf.len(), Step::More);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Eos,
    Stop,
    /// The peer ended the stream at a record boundary (or inside a record
    /// head, which stays in the socket for RamLoader to report).
    Eof,
    /// The stream ended inside the pending record's payload.
    Truncated,
    ZeroFill { ch: u8 },
}

/// Where the records come from: the socket itself, or a TLS session's
/// decrypted look-ahead. Either way only the bytes the decoder used are
/// taken, so what it leaves is read next by RamLoader through the channel.
pub trait Source {
    /// Calls `f` with the bytes there (waiting while there are none) and
    /// takes as many as it returns. Resolves how many `f` saw, 0 (`f` not
    /// called) when nothing more will come.
    fn take(&self, after: u64, f: &mut dyn FnMut(&[u8]) -> usize) -> VResult<usize>;
    /// `take` showed `have` bytes, less than a record head: waits for more
    /// (true) unless nothing more can come (false).
    fn wait_more(&self, have: usize, after: u64) -> VResult<bool>;
}

/// Most bytes one look at the source parses.
pub const PEEK_SIZE: usize = 512 << 10;

/// Reads records from the source until EOS or a record for RamLoader;
/// resolves the bytes taken and how it ended.
pub fn load(src: &dyn Source, blocks: &[Block], st: &mut State, base: u64) -> VResult<(u64, End)> {
    let mut taken = 0u64;
    loop {
        let (mut used, mut step) = (0, Step::More);
        let n = src.take(taken, &mut |buf| {
            (used, step) = parse(buf, base + taken, blocks, st);
            used
        })?;
        if n == 0 {
            return Ok((taken, if st.pending.is_some() { End::Truncated } else { End::Eof }));
        }
        taken += used as u64;
        match step {
            Step::Eos => return Ok((taken, End::Eos)),
            Step::Stop => return Ok((taken, End::Stop)),
            Step::ZeroFill { ch } => return Ok((taken, End::ZeroFill { ch })),
            Step::More if used == 0 => {
                if !src.wait_more(n, taken)? {
                    return Ok((taken, End::Eof));
                }
            }
            Step::More => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(off: u64, flags: u64, name: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
        let mut v = (off | flags).to_be_bytes().to_vec();
        if let Some(n) = name {
            v.push(n.len() as u8);
            v.extend_from_slice(n);
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn pages_in_any_split_give_the_same_memory() {
        let page = vec![5u8; PAGE];
        let mut stream = rec(PAGE as u64, FLAG_PAGE, Some(b"pc.ram"), &page);
        stream.extend(rec(0, FLAG_ZERO | FLAG_CONTINUE, None, &[0]));
        stream.extend(rec(2 * PAGE as u64, FLAG_PAGE | FLAG_CONTINUE, None, &[9u8; PAGE]));
        stream.extend(FLAG_EOS.to_be_bytes());
        for cut in [1, 7, 8, 9, 15, 16, 100, PAGE, PAGE + 15, PAGE + 16, PAGE + 24, PAGE + 25, stream.len() - 3] {
            let mut ram = vec![1u8; 3 * PAGE];
            // SAFETY: the test's buffers outlive every use of the blocks made here.
            let blocks = [Block { mem: unsafe { GuestMem::new(ram.as_mut_ptr(), ram.len()) }, name: b"pc.ram", received: None }];
            let mut st = State::default();
            let (a, s1) = parse(&stream[..cut], 0, &blocks, &mut st);
            assert_eq!(s1, Step::More, "cut {cut}");
            let (b, s2) = parse(&stream[a..], a as u64, &blocks, &mut st);
            assert_eq!((a + b, s2), (stream.len(), Step::Eos), "cut {cut}");
            assert_eq!((st.normal, st.zero, st.last), (2, 1, Some(0)));
            assert!(ram[..PAGE].iter().all(|&x| x == 0) && ram[PAGE..2 * PAGE].iter().all(|&x| x == 5) && ram[2 * PAGE..].iter().all(|&x| x == 9));
        }
    }

    #[test]
    fn applied_pages_are_recorded_a_pending_one_once_complete() {
        let mut ram = vec![1u8; 12 * PAGE];
        let mut bits = vec![0u8; 2];
        let mut stream = rec(9 * PAGE as u64, FLAG_PAGE, Some(b"a"), &[5u8; PAGE]);
        stream.extend(rec(0, FLAG_ZERO | FLAG_CONTINUE, None, &[0]));
        let cut = stream.len() - 1;
        stream.extend(rec(2 * PAGE as u64, FLAG_PAGE | FLAG_CONTINUE, None, &[9u8; PAGE]));
        // SAFETY: the test's buffers outlive every use of the blocks made here.
        let mem = unsafe { GuestMem::new(ram.as_mut_ptr(), ram.len()) };
        // SAFETY: as above.
        let received = Some(unsafe { PageBits::new(bits.as_mut_ptr(), bits.len()) });
        let blocks = [Block { mem, name: b"a", received }];
        let mut st = State::default();
        let (a, _) = parse(&stream[..cut], 0, &blocks, &mut st);
        assert!(st.pending.is_some(), "the zero page's fill byte is still to come");
        assert_eq!(bits, [0, 1 << 1], "page 9 only");
        let (b, _) = parse(&stream[a..a + 10], a as u64, &blocks, &mut st);
        assert_eq!(bits, [1, 1 << 1], "the zero page 0 once its fill byte came");
        parse(&stream[a + b..], (a + b) as u64, &blocks, &mut st);
        assert_eq!(bits, [1 | 1 << 2, 1 << 1]);
    }

    #[test]
    fn records_for_the_loader_are_left_alone() {
        let mut ram = vec![1u8; PAGE];
        // SAFETY: the test's buffers outlive every use of the blocks made here.
        let blocks = [Block { mem: unsafe { GuestMem::new(ram.as_mut_ptr(), ram.len()) }, name: b"a", received: None }];
        let cases: Vec<(Vec<u8>, Option<usize>)> = vec![
            (rec(0, FLAG_PAGE | 0x40, Some(b"a"), &[0; PAGE]), None),
            (rec(PAGE as u64, FLAG_PAGE, Some(b"a"), &[0; PAGE]), None),
            (rec(0, FLAG_PAGE, Some(b"b"), &[0; PAGE]), None),
            (rec(0, FLAG_PAGE | FLAG_CONTINUE, None, &[0; PAGE]), None),
            (rec(0, FLAG_ZERO | FLAG_CONTINUE, None, &[3]), Some(0)),
            (rec(4 * PAGE as u64, FLAG_MEM_SIZE, None, &[]), None),
            (rec(0, FLAG_EOS | FLAG_CONTINUE, None, &[]), None),
            (rec(1 << 53, FLAG_PAGE, Some(b"a"), &[]), None),
        ];
        for (i, (bytes, last)) in cases.iter().enumerate() {
            let mut st = State { last: *last, ..State::default() };
            assert_eq!(parse(bytes, 0, &blocks, &mut st), (0, Step::Stop), "case {i}");
            assert_eq!((st.normal, st.zero), (0, 0));
        }
        assert!(ram.iter().all(|&x| x == 1), "nothing was written");
    }

    #[test]
    fn a_pending_zero_page_checks_its_fill_byte() {
        let mut ram = vec![1u8; PAGE];
        // SAFETY: the test's buffers outlive every use of the blocks made here.
        let blocks = [Block { mem: unsafe { GuestMem::new(ram.as_mut_ptr(), ram.len()) }, name: b"a", received: None }];
        let mut st = State::default();
        let head = rec(0, FLAG_ZERO, Some(b"a"), &[]);
        assert_eq!(parse(&head, 10, &blocks, &mut st), (head.len(), Step::More));
        assert_eq!(st.pending, Some(Pending { block: 0, offset: 0, zero: true, got: 0, at: 10 }));
        assert_eq!(parse(&[2], 20, &blocks, &mut st), (0, Step::ZeroFill { ch: 2 }));
    }
}

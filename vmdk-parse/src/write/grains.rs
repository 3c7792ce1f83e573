//! Cutting a sequential stream of data, zero and unallocated ranges into grains.
//!
//! Sparse extents store whole grains. The writer API takes ranges at any byte offset, so the
//! [`GrainAssembler`] gathers the ranges that fall in one grain and decides what the grain
//! becomes once it is complete:
//! - any data that is not all zeros: a data grain (zero-filled where the grain had zero or
//!   unallocated bytes, since a grain is stored whole);
//! - otherwise any zero range, or data bytes that are all zeros: a zero grain;
//! - otherwise (only unallocated bytes): unallocated.
//!
//! Runs of whole zero or unallocated grains are passed on as runs, so a 2 TiB unallocated range
//! costs one call.

use super::WriteError;
use crate::cat::is_zero;

/// Where complete grains go. `index` counts grains from the start of the extent.
pub(crate) trait GrainSink {
    /// A data grain, exactly one grain long (zero-padded past the extent's end).
    fn data(&mut self, index: u64, grain: &[u8]) -> Result<(), WriteError>;
    /// Grains `[first, end)` read as zeros and are allocated as such.
    fn zero_run(&mut self, first: u64, end: u64) -> Result<(), WriteError>;
    /// Grains `[first, end)` are unallocated.
    fn unallocated_run(&mut self, first: u64, end: u64) -> Result<(), WriteError>;
}

/// The kind of a range handed to the assembler.
#[derive(Clone, Copy)]
pub(crate) enum Range<'a> {
    Data(&'a [u8]),
    Zero(u64),
    Unallocated(u64),
}

impl Range<'_> {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Range::Data(d) => d.len() as u64,
            Range::Zero(n) | Range::Unallocated(n) => *n,
        }
    }
}

pub(crate) struct GrainAssembler {
    grain_bytes: u64,
    /// Bytes of the extent.
    size: u64,
    /// Next byte expected.
    pos: u64,
    /// The grain being gathered: its bytes, and what fell into it so far.
    buf: Vec<u8>,
    open: bool,
    has_data: bool,
    has_zero: bool,
}

impl GrainAssembler {
    pub(crate) fn new(grain_bytes: u64, size: u64) -> GrainAssembler {
        GrainAssembler {
            grain_bytes,
            size,
            pos: 0,
            buf: vec![0; grain_bytes as usize],
            open: false,
            has_data: false,
            has_zero: false,
        }
    }

    /// Next byte expected; ranges must start there.
    #[cfg(test)]
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Take the range that starts at [`pos`](Self::pos). The caller keeps it inside the extent.
    pub(crate) fn push(
        &mut self,
        range: Range<'_>,
        sink: &mut dyn GrainSink,
    ) -> Result<(), WriteError> {
        let gb = self.grain_bytes;
        let mut done = 0u64;
        let total = range.len();
        debug_assert!(self.pos + total <= self.size);
        while done < total {
            let g = self.pos / gb;
            let grain_start = g * gb;
            let grain_end = (grain_start + gb).min(self.size);
            let n = (total - done).min(grain_end - self.pos);
            let whole = !self.open && self.pos == grain_start && n == grain_end - grain_start;
            match range {
                Range::Data(d) => {
                    let part = &d[done as usize..(done + n) as usize];
                    if whole && part.len() as u64 == gb {
                        if is_zero(part) {
                            sink.zero_run(g, g + 1)?;
                        } else {
                            sink.data(g, part)?;
                        }
                    } else {
                        self.open_grain();
                        let at = (self.pos - grain_start) as usize;
                        self.buf[at..at + part.len()].copy_from_slice(part);
                        self.has_data = true;
                    }
                }
                Range::Zero(_) | Range::Unallocated(_) if whole => {
                    // The run of whole grains inside what is left of the range.
                    let left = total - done;
                    let run_end = if self.pos + left >= self.size {
                        self.size
                    } else {
                        (self.pos + left) / gb * gb
                    };
                    let end_grain = run_end.div_ceil(gb);
                    if matches!(range, Range::Zero(_)) {
                        sink.zero_run(g, end_grain)?;
                    } else {
                        sink.unallocated_run(g, end_grain)?;
                    }
                    let step = run_end - self.pos;
                    self.pos = run_end;
                    done += step;
                    continue;
                }
                Range::Zero(_) => {
                    self.open_grain();
                    self.has_zero = true;
                }
                Range::Unallocated(_) => self.open_grain(),
            }
            self.pos += n;
            done += n;
            if self.open && self.pos == grain_end {
                self.close_grain(g, sink)?;
            }
        }
        Ok(())
    }

    fn open_grain(&mut self) {
        if !self.open {
            self.open = true;
            self.buf.fill(0);
            self.has_data = false;
            self.has_zero = false;
        }
    }

    fn close_grain(&mut self, g: u64, sink: &mut dyn GrainSink) -> Result<(), WriteError> {
        self.open = false;
        if self.has_data && !is_zero(&self.buf) {
            sink.data(g, &self.buf)
        } else if self.has_data || self.has_zero {
            sink.zero_run(g, g + 1)
        } else {
            sink.unallocated_run(g, g + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Log(Vec<(char, u64, u64, u8)>);

    impl GrainSink for Log {
        fn data(&mut self, index: u64, grain: &[u8]) -> Result<(), WriteError> {
            assert_eq!(grain.len(), 8);
            self.0
                .push(('d', index, index + 1, grain.iter().fold(0, |a, &b| a ^ b)));
            Ok(())
        }
        fn zero_run(&mut self, first: u64, end: u64) -> Result<(), WriteError> {
            self.0.push(('z', first, end, 0));
            Ok(())
        }
        fn unallocated_run(&mut self, first: u64, end: u64) -> Result<(), WriteError> {
            self.0.push(('u', first, end, 0));
            Ok(())
        }
    }

    #[test]
    fn ranges_become_grains() {
        // 8-byte grains, a 52-byte extent: the last grain is partial.
        let mut a = GrainAssembler::new(8, 52);
        let mut log = Log::default();
        a.push(Range::Unallocated(16), &mut log).unwrap(); // grains 0, 1
        a.push(Range::Data(&[1, 2, 3]), &mut log).unwrap(); // grain 2, partly
        a.push(Range::Zero(2), &mut log).unwrap();
        a.push(Range::Unallocated(3 + 8), &mut log).unwrap(); // end of 2, all of 3
        a.push(Range::Data(&[0; 8]), &mut log).unwrap(); // grain 4: data of zeros
        a.push(Range::Zero(1), &mut log).unwrap(); // grain 5 starts with zero...
        a.push(Range::Unallocated(7), &mut log).unwrap(); // ...and ends unallocated
        a.push(Range::Data(&[9, 9, 9, 0]), &mut log).unwrap(); // the partial last grain
        assert_eq!(a.pos(), 52);
        assert_eq!(
            log.0,
            vec![
                ('u', 0, 2, 0),
                ('d', 2, 3, 1 ^ 2 ^ 3),
                ('u', 3, 4, 0),
                ('z', 4, 5, 0),
                ('z', 5, 6, 0),
                ('d', 6, 7, 9),
            ]
        );
    }

    #[test]
    fn long_runs_are_one_call() {
        let mut a = GrainAssembler::new(8, 8 * 1000 + 4);
        let mut log = Log::default();
        a.push(Range::Zero(3), &mut log).unwrap();
        a.push(Range::Zero(8 * 998), &mut log).unwrap();
        a.push(Range::Unallocated(8 * 1000 + 4 - 3 - 8 * 998), &mut log)
            .unwrap();
        assert_eq!(
            log.0,
            vec![
                ('z', 0, 1, 0),
                ('z', 1, 998, 0),
                ('z', 998, 999, 0),
                ('u', 999, 1001, 0)
            ]
        );
    }
}

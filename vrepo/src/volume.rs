//! An entry's *volume*: its files laid end to end, each starting at a multiple of 1 MiB, the
//! gaps unallocated. Saving diffs volumes (with vdiff), building patches one (with vpatch):
//! that is how blocks moved or duplicated across files are stored once.
//!
//! [`VolumeImage`] reads a volume from the working area (file holes reported as unallocated,
//! so sparse files stay sparse); [`FilesSink`] writes a built volume into its files.

use crate::manifest::FILE_ALIGN;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use vdiff::image::Kind;
use vmdk_parse::cat::{open_direct, AlignedBuf, SparseOut, DIRECT_ALIGN};

/// The bytes of one file of a volume.
pub enum Source {
    File(File),
    /// Made in memory (a `.vmx` rewritten by `save --at-snapshot`).
    Bytes(Vec<u8>),
}

pub struct Part {
    pub offset: u64,
    pub size: u64,
    pub source: Source,
    /// For messages: the file's path.
    pub name: String,
}

/// Offsets for files of these sizes, in order, and the volume's size.
pub fn layout(sizes: impl IntoIterator<Item = u64>) -> (Vec<u64>, u64) {
    let mut at = 0u64;
    let mut offsets = Vec::new();
    for s in sizes {
        offsets.push(at);
        at += s.div_ceil(FILE_ALIGN) * FILE_ALIGN;
    }
    (offsets, at)
}

/// A volume read from the working area's files.
pub struct VolumeImage {
    pub size: u64,
    pub parts: Vec<Part>,
    /// File bytes read so far (for progress and the save report).
    pub read: AtomicU64,
    pub progress: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

impl VolumeImage {
    pub fn new(parts: Vec<Part>, size: u64) -> VolumeImage {
        VolumeImage {
            size,
            parts,
            read: AtomicU64::new(0),
            progress: None,
        }
    }

    fn counted(&self, n: u64) {
        let t = self.read.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(p) = &self.progress {
            p(t);
        }
    }
}

/// Report `len` bytes at `at` (volume offset) as `kind`, merging with the last range.
fn push(layout: &mut Vec<(u64, u64, Kind)>, at: u64, len: u64, kind: Kind) {
    if len == 0 {
        return;
    }
    match layout.last_mut() {
        Some(l) if l.2 == kind && l.0 + l.1 == at => l.1 += len,
        _ => layout.push((at, len, kind)),
    }
}

/// Read `[from, from + buf.len())` of `f` into `buf`, reporting holes (SEEK_HOLE) as
/// unallocated. `vol` is where `from` sits in the volume.
fn read_file_range(
    f: &File,
    buf: &mut [u8],
    from: u64,
    vol: u64,
    layout: &mut Vec<(u64, u64, Kind)>,
) -> io::Result<u64> {
    use rustix::fs::{seek, SeekFrom};
    let end = from + buf.len() as u64;
    let mut pos = from;
    let mut read = 0;
    while pos < end {
        let data = match seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            // No SEEK_DATA here: everything is data.
            Err(_) => pos,
        };
        if data > pos {
            buf[(pos - from) as usize..(data - from) as usize].fill(0);
            push(layout, vol + (pos - from), data - pos, Kind::Unallocated);
            pos = data;
            continue;
        }
        let hole = match seek(f, SeekFrom::Hole(pos)) {
            Ok(h) => h.clamp(pos + 1, end),
            Err(_) => end,
        };
        let dst = &mut buf[(pos - from) as usize..(hole - from) as usize];
        f.read_exact_at(dst, pos).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::other("the file shrank while it was read")
            } else {
                e
            }
        })?;
        read += hole - pos;
        push(layout, vol + (pos - from), hole - pos, Kind::Data);
        pos = hole;
    }
    Ok(read)
}

impl vdiff::Image for VolumeImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_layout(
        &self,
        buf: &mut [u8],
        offset: u64,
        layout: &mut Vec<(u64, u64, Kind)>,
    ) -> vdiff::Result<()> {
        layout.clear();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        // The first part that ends after `offset`.
        let mut k = self.parts.partition_point(|p| p.offset + p.size <= offset);
        while pos < end {
            let gap_to = match self.parts.get(k) {
                Some(p) if p.offset + p.size <= pos => {
                    k += 1;
                    continue;
                }
                Some(p) if p.offset > pos => p.offset.min(end),
                Some(_) => pos,
                None => end,
            };
            if gap_to > pos {
                // Padding to the next file: unallocated zeros.
                buf[(pos - offset) as usize..(gap_to - offset) as usize].fill(0);
                push(layout, pos, gap_to - pos, Kind::Unallocated);
                pos = gap_to;
                continue;
            }
            let p = &self.parts[k];
            let pend = (p.offset + p.size).min(end);
            let dst = &mut buf[(pos - offset) as usize..(pend - offset) as usize];
            match &p.source {
                Source::Bytes(b) => {
                    dst.copy_from_slice(&b[(pos - p.offset) as usize..(pend - p.offset) as usize]);
                    push(layout, pos, pend - pos, Kind::Data);
                    self.counted(pend - pos);
                }
                Source::File(f) => {
                    let n = read_file_range(f, dst, pos - p.offset, pos, layout).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("reading {}: {e}", p.name))
                    })?;
                    self.counted(n);
                }
            }
            pos = pend;
            k += 1;
        }
        Ok(())
    }
}

/// Where a built volume goes: its files, already created at their sizes (holes). Data is
/// written; zero ranges are allocated (`fallocate`), as they were in the saved file;
/// unallocated ranges and the padding between files are left as holes.
///
/// Writing happens on a thread of its own, so that vpatch produces the next windows while the
/// previous ones are written; aligned runs go out with `O_DIRECT` where the file system takes
/// it (vmdk-parse's [`SparseOut`]), which saves the page-cache copy that dominates a plain
/// write of a large image; neighbouring jobs already queued go out in one `pwritev` of up to
/// 16 MiB.
pub struct FilesSink {
    /// `(volume offset, size)` of each file, in volume order.
    layout: Vec<(u64, u64)>,
    tx: Option<mpsc::SyncSender<Job>>,
    writer: Option<std::thread::JoinHandle<io::Result<Vec<File>>>>,
    pub written: u64,
    pub progress: Option<Box<dyn Fn(u64)>>,
}

enum Job {
    Data {
        k: usize,
        at: u64,
        bytes: vpatch::SharedBytes,
    },
    Zero {
        k: usize,
        at: u64,
        len: u64,
    },
}

/// Jobs queued for the writer thread (each at most a 1 MiB window's range): room for two
/// full groups, so one is ready while the other is written.
const QUEUE: usize = 32;

/// Bytes one `O_DIRECT` call writes at most: neighbouring jobs already queued go out in one
/// `pwritev`. One 1 MiB write at a time leaves the device idle between them: `fio` (psync,
/// direct) here gives about 1.3 GB/s with 1 MiB writes, 2.06 GB/s with 4 MiB ones and 2.2 GB/s
/// with 16 MiB ones. A build of the bench's 3-entry repository took a median 1.10 s with 4 MiB
/// groups and 16 queued jobs, 1.0 s with 16 MiB groups and 32 (8 interleaved runs each), for
/// about 20 MiB more RSS.
const GROUP_BYTES: usize = 16 << 20;

/// Whether a write of `bytes` at `at` can go through `O_DIRECT` whole.
fn direct_aligned(at: u64, bytes: &[u8]) -> bool {
    at % DIRECT_ALIGN as u64 == 0
        && bytes.len() % DIRECT_ALIGN == 0
        && (bytes.as_ptr() as usize) % DIRECT_ALIGN == 0
}

/// The writer thread: every job of `rx`, in order; runs of contiguous aligned data jobs for
/// one file that are already queued are written together.
fn write_jobs(
    files: Vec<(u64, u64, File, PathBuf)>,
    rx: mpsc::Receiver<Job>,
) -> io::Result<Vec<File>> {
    let mut direct: Vec<Option<File>> = files.iter().map(|f| open_direct(&f.3)).collect();
    let mut pending: Option<Job> = None;
    let mut group: Vec<vpatch::SharedBytes> = Vec::new();
    loop {
        let job = match pending.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        match job {
            Job::Data { k, at, bytes } => {
                let mut len = bytes.get().len();
                let groupable = direct[k].is_some() && direct_aligned(at, bytes.get());
                group.clear();
                group.push(bytes);
                while groupable && len < GROUP_BYTES {
                    match rx.try_recv() {
                        Ok(Job::Data {
                            k: k2,
                            at: at2,
                            bytes: b2,
                        }) if k2 == k
                            && at2 == at + len as u64
                            && len + b2.get().len() <= GROUP_BYTES
                            && direct_aligned(at2, b2.get()) =>
                        {
                            len += b2.get().len();
                            group.push(b2);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let mut out = SparseOut {
                    file: &files[k].2,
                    direct: direct[k].take(),
                };
                write_group(&mut out, &group, at)?;
                direct[k] = out.direct;
            }
            Job::Zero { k, at, len } => {
                use rustix::fs::{fallocate, FallocateFlags};
                // Allocation is a nicety: the hole reads as zeros just the same.
                let _ = fallocate(&files[k].2, FallocateFlags::empty(), at, len);
            }
        }
    }
    Ok(files.into_iter().map(|f| f.2).collect())
}

/// Write the contiguous `group` at `at`: several buffers in one `O_DIRECT` `pwritev`, the rest
/// of a short write (or a refused one) through [`SparseOut`] one buffer at a time.
fn write_group(out: &mut SparseOut, group: &[vpatch::SharedBytes], at: u64) -> io::Result<()> {
    let mut done = 0usize;
    if let (Some(d), true) = (&out.direct, group.len() > 1) {
        let slices: Vec<io::IoSlice> = group.iter().map(|b| io::IoSlice::new(b.get())).collect();
        loop {
            match rustix::io::pwritev(d, &slices, at) {
                Ok(n) => done = n,
                Err(rustix::io::Errno::INTR) => continue,
                // Refused (some file systems take O_DIRECT opens but not the writes): SparseOut
                // finds out again and falls back to the page cache.
                Err(rustix::io::Errno::INVAL) => {}
                Err(e) => return Err(e.into()),
            }
            break;
        }
    }
    let mut from = 0usize;
    for b in group {
        let b = b.get();
        let (start, end) = (from, from + b.len());
        from = end;
        if done >= end {
            continue;
        }
        let skip = done.saturating_sub(start);
        out.write_at(&b[skip..], at + (start + skip) as u64)?;
    }
    Ok(())
}

impl FilesSink {
    /// `files`: `(volume offset, size, file, path)` in volume order; the files exist at their
    /// sizes.
    pub fn new(
        files: Vec<(u64, u64, File, PathBuf)>,
        progress: Option<Box<dyn Fn(u64)>>,
    ) -> FilesSink {
        let layout = files.iter().map(|f| (f.0, f.1)).collect();
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let writer = std::thread::spawn(move || write_jobs(files, rx));
        FilesSink {
            layout,
            tx: Some(tx),
            writer: Some(writer),
            written: 0,
            progress,
        }
    }

    /// Wait for every write; the files back, in order.
    pub fn finish(mut self) -> io::Result<Vec<File>> {
        self.tx = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("the writer thread failed")),
        }
    }

    fn send(&mut self, job: Job) -> io::Result<()> {
        let tx = self.tx.as_ref().expect("not finished");
        if tx.send(job).is_err() {
            // The writer stopped on an error: report it.
            self.tx = None;
            return match self.writer.take().map(|w| w.join()) {
                Some(Ok(Err(e))) => Err(e),
                _ => Err(io::Error::other("the writer thread failed")),
            };
        }
        Ok(())
    }

    /// The parts of `[offset, offset + len)` that fall in files: `(index, file offset, start
    /// in the range, length)`.
    fn pieces(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64, u64)> {
        let end = offset + len;
        let mut out = Vec::new();
        let mut k = self.layout.partition_point(|p| p.0 + p.1 <= offset);
        while let Some(&(fo, fs)) = self.layout.get(k) {
            if fo >= end {
                break;
            }
            let s = fo.max(offset);
            let e = (fo + fs).min(end);
            if s < e {
                out.push((k, s - fo, s - offset, e - s));
            }
            k += 1;
        }
        out
    }
}

impl vpatch::Sink for FilesSink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        // Lent bytes are copied for the writer thread (vpatch hands its windows over with
        // `data_shared` instead).
        let mut buf = AlignedBuf::new(bytes.len());
        buf.get_mut(bytes.len()).copy_from_slice(bytes);
        self.data_shared(offset, vpatch::SharedBytes::new(buf, bytes.len()))
    }

    fn data_shared(&mut self, offset: u64, bytes: vpatch::SharedBytes) -> io::Result<()> {
        for (k, at, start, len) in self.pieces(offset, bytes.get().len() as u64) {
            self.send(Job::Data {
                k,
                at,
                bytes: bytes.slice(start as usize, len as usize),
            })?;
            self.written += len;
        }
        if let Some(p) = &self.progress {
            p(self.written);
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        for (k, at, _, l) in self.pieces(offset, len) {
            self.send(Job::Zero { k, at, len: l })?;
        }
        Ok(())
    }

    fn unallocated(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdiff::Image;

    /// Jobs already queued when the writer looks: contiguous aligned ones are written
    /// together (one `pwritev`), the rest alone; every byte lands where its job says.
    #[test]
    fn queued_jobs_are_written_in_groups_at_their_places() {
        use vpatch::SharedBytes;
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("f{i}"))).collect();
        let mib = 1usize << 20;
        // More contiguous 1 MiB jobs than one group takes.
        let n = GROUP_BYTES / mib + 2;
        let size = ((n + 6) * mib) as u64;
        let files: Vec<(u64, u64, File, PathBuf)> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .unwrap();
                f.set_len(size).unwrap();
                (i as u64 * size, size, f, p.clone())
            })
            .collect();
        let mut want = vec![vec![0u8; size as usize]; 2];
        let (tx, rx) = mpsc::sync_channel::<Job>(64);
        let mut seed = 1u8;
        let mut data = |k: usize, at: u64, len: usize, want: &mut Vec<Vec<u8>>| {
            let mut b = AlignedBuf::new(len);
            for (j, x) in b.get_mut(len).iter_mut().enumerate() {
                *x = seed.wrapping_add((j / 4096) as u8) | 1;
            }
            seed = seed.wrapping_add(37);
            want[k][at as usize..at as usize + len].copy_from_slice(b.get(len));
            Job::Data {
                k,
                at,
                bytes: SharedBytes::new(b, len),
            }
        };
        let mut jobs = Vec::new();
        // n contiguous 1 MiB jobs (more than one group), a 64 KiB one after them.
        for j in 0..n {
            jobs.push(data(0, (j * mib) as u64, mib, &mut want));
        }
        jobs.push(data(0, (n * mib) as u64, 64 << 10, &mut want));
        // A gap, then an unaligned job and an aligned one right after it.
        jobs.push(data(0, ((n + 2) * mib + 100) as u64, 5000, &mut want));
        jobs.push(data(0, ((n + 2) * mib + 5100) as u64, 3 * 4096, &mut want));
        // The other file between two runs of this one, and a zero range.
        jobs.push(data(1, 0, 2 * mib, &mut want));
        jobs.push(Job::Zero {
            k: 1,
            at: 4 << 20,
            len: 1 << 20,
        });
        jobs.push(data(0, ((n + 4) * mib) as u64, mib, &mut want));
        jobs.push(data(1, (2 * mib) as u64, mib, &mut want));
        jobs.push(data(0, ((n + 5) * mib) as u64, mib, &mut want));
        for j in jobs {
            tx.send(j).unwrap();
        }
        drop(tx);
        let files = write_jobs(files, rx).unwrap();
        for (k, f) in files.iter().enumerate() {
            let mut got = vec![1u8; size as usize];
            f.read_exact_at(&mut got, 0).unwrap();
            assert!(got == want[k], "file {k} differs");
        }
    }

    #[test]
    fn a_group_without_o_direct_goes_through_the_page_cache() {
        use vpatch::SharedBytes;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        let bufs: Vec<SharedBytes> = (0..3u8)
            .map(|i| {
                let mut b = AlignedBuf::new(8192);
                b.get_mut(8192).fill(i + 1);
                SharedBytes::new(b, 8192)
            })
            .collect();
        // No O_DIRECT handle: every buffer through the page cache, at its place.
        let mut out = SparseOut {
            file: &f,
            direct: None,
        };
        write_group(&mut out, &bufs, 4096).unwrap();
        let mut got = vec![9u8; 4096 + 3 * 8192];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got[..4096].iter().all(|&x| x == 0));
        for i in 0..3 {
            let at = 4096 + i * 8192;
            assert!(got[at..at + 8192].iter().all(|&x| x == i as u8 + 1));
        }
    }

    #[test]
    fn layout_aligns_files() {
        let (o, s) = layout([10, 0, FILE_ALIGN, FILE_ALIGN + 1]);
        assert_eq!(o, vec![0, FILE_ALIGN, FILE_ALIGN, 2 * FILE_ALIGN]);
        assert_eq!(s, 4 * FILE_ALIGN);
    }

    #[test]
    fn volume_reads_files_gaps_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"hello").unwrap();
        let b = dir.path().join("b");
        let fb = File::create(&b).unwrap();
        fb.set_len(3 * 4096).unwrap();
        fb.write_all_at(b"xyz", 4096).unwrap();
        drop(fb);
        let (offs, size) = layout([5, 3 * 4096, 3]);
        let parts = vec![
            Part {
                offset: offs[0],
                size: 5,
                source: Source::File(File::open(&a).unwrap()),
                name: "a".into(),
            },
            Part {
                offset: offs[1],
                size: 3 * 4096,
                source: Source::File(File::open(&b).unwrap()),
                name: "b".into(),
            },
            Part {
                offset: offs[2],
                size: 3,
                source: Source::Bytes(b"abc".to_vec()),
                name: "c".into(),
            },
        ];
        let v = VolumeImage::new(parts, size);
        let mut buf = vec![1u8; size as usize];
        let mut lay = Vec::new();
        v.read_layout(&mut buf, 0, &mut lay).unwrap();
        assert_eq!(&buf[..5], b"hello");
        assert!(buf[5..FILE_ALIGN as usize].iter().all(|&x| x == 0));
        let b0 = FILE_ALIGN as usize;
        assert_eq!(&buf[b0 + 4096..b0 + 4099], b"xyz");
        assert_eq!(&buf[2 * b0..2 * b0 + 3], b"abc");
        // Layout covers the range in order.
        let mut at = 0;
        for &(o, l, _) in &lay {
            assert_eq!(o, at);
            at += l;
        }
        assert_eq!(at, size);
        assert_eq!(lay[0], (0, 5, Kind::Data));
        assert_eq!(lay.last().unwrap().2, Kind::Unallocated);
        // An unaligned window in the middle reads the same bytes.
        let mut w = vec![0u8; 10000];
        v.read_layout(&mut w, FILE_ALIGN - 100, &mut lay).unwrap();
        assert_eq!(
            &w[..],
            &buf[(FILE_ALIGN - 100) as usize..(FILE_ALIGN - 100) as usize + 10000]
        );
    }
}

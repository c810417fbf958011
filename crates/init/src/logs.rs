//! Output: every daemon line, prefixed, written whole, in order.
//!
//! Readers (pipes and followed files) frame complete lines, prefix them and write batches under
//! one lock, so lines never interleave and a slow consumer of tether's output slows the daemons
//! down instead of growing memory. When tether's stdout or stderr is a pipe (a container's
//! output, `| tee`), it is reopened through /proc/self/fd with a non-blocking file description of
//! its own and written from the event loop, which waits for room without blocking. Anything else
//! (a terminal, a file) is written by a thread, so a paused terminal never stalls supervision.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use regex_lite::Regex;
use tether_spec::model::{LogFormat, Logs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Lines longer than this are delivered in pieces of this size, as Docker does.
pub const MAX_LINE: usize = 16 * 1024;
/// The largest read from a daemon's pipe.
const MAX_READ: usize = 256 * 1024;
/// The kernel buffer asked for on each daemon's pipe (the unprivileged maximum).
const PIPE_SIZE: i32 = 1024 * 1024;
/// Ends every piece of a long line but the last (text format).
pub const CONTINUED: &str = "\u{21b5}";
/// Batches waiting for a writer thread; a full queue makes readers wait (back-pressure).
const QUEUE: usize = 8;
/// At most this many spare buffers, each at most `POOL_BUFFER` bytes, are kept for reuse.
const POOL_SIZE: usize = QUEUE + 2;
const POOL_BUFFER: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

enum Sink {
    Pipe(tokio::net::unix::pipe::Sender),
    /// A regular file or /dev/null: writes that cannot stall.
    Direct(std::fs::File),
    Thread(mpsc::Sender<Vec<u8>>),
}

enum Event {
    Line(Stream, Vec<u8>),
    Flush(oneshot::Sender<()>),
}

struct Inner {
    /// stdout and stderr under one lock: one total order of writes.
    sinks: tokio::sync::Mutex<[Sink; 2]>,
    /// Written buffers come back here: a chatty daemon costs no allocation per batch.
    pool: Mutex<Vec<Vec<u8>>>,
    /// The supervisor's own lines, in the order it produced them.
    events: mpsc::UnboundedSender<Event>,
}

/// The handle readers write through. Cloning is cheap.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Inner>,
}

/// Where tether's output goes: the CLI hands in (copies of) its stdout and stderr.
pub struct Streams {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Sets up both streams; call inside the runtime. Join the threads after the runtime is gone.
pub fn output(streams: Streams) -> (Output, Vec<std::thread::JoinHandle<()>>) {
    let mut threads = Vec::new();
    let mut sink = |fd: OwnedFd| match (reopen_pipe(&fd), never_stalls(&fd)) {
        (Some(p), _) => Sink::Pipe(p),
        (None, Some(f)) => Sink::Direct(f),
        (None, None) => {
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
            let mut file = std::fs::File::from(fd);
            threads.push(
                std::thread::Builder::new()
                    .name("tether-out".into())
                    .spawn(move || {
                        while let Some(b) = rx.blocking_recv() {
                            // A closed output (EPIPE) must not stop the draining, or daemons
                            // would block.
                            let _ = file.write_all(&b);
                        }
                    })
                    .expect("the output thread starts"),
            );
            Sink::Thread(tx)
        }
    };
    let sinks = [sink(streams.stdout), sink(streams.stderr)];
    let (events, mut rx) = mpsc::unbounded_channel();
    let out = Output {
        inner: Arc::new(Inner {
            sinks: tokio::sync::Mutex::new(sinks),
            pool: Mutex::new(Vec::new()),
            events,
        }),
    };
    let writer = out.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Line(stream, bytes) => writer.send(stream, bytes).await,
                Event::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    (out, threads)
}

/// A copy of `fd` when it is a regular file or a character device other than a terminal.
fn never_stalls(fd: &OwnedFd) -> Option<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::from(fd.try_clone().ok()?);
    let kind = file.metadata().ok()?.file_type();
    let quiet_device = kind.is_char_device() && !nix::unistd::isatty(&file).unwrap_or(true);
    (kind.is_file() || quiet_device).then_some(file)
}

/// A new, non-blocking file description for `fd` when it is a pipe.
fn reopen_pipe(fd: &OwnedFd) -> Option<tokio::net::unix::pipe::Sender> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()?;
    if !file.metadata().ok()?.file_type().is_fifo() {
        return None;
    }
    // A deeper pipe means fewer waits for the reader; a refusal is harmless.
    let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    tokio::net::unix::pipe::Sender::from_file(file).ok()
}

impl Output {
    /// An empty buffer with room for `capacity` bytes, reused when one is spare.
    pub fn buffer(&self, capacity: usize) -> Vec<u8> {
        let spare = self
            .inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut b = spare.unwrap_or_default();
        b.reserve(capacity);
        b
    }

    /// Writes a batch of whole lines, waiting (without blocking) while the reader is behind.
    pub async fn send(&self, stream: Stream, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let mut sinks = self.inner.sinks.lock().await;
        // A closed reader (EPIPE) is not worth stopping for: the lines are dropped.
        match &mut sinks[stream as usize] {
            Sink::Pipe(p) => {
                let _ = p.write_all(&bytes).await;
            }
            Sink::Direct(f) => {
                let _ = f.write_all(&bytes);
            }
            Sink::Thread(tx) => {
                let _ = tx.send(bytes).await;
                return;
            }
        }
        drop(sinks);
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_SIZE && bytes.capacity() <= POOL_BUFFER {
            let mut b = bytes;
            b.clear();
            pool.push(b);
        }
    }

    /// For the supervisor's own lines: never waits; written in the order given.
    pub fn send_now(&self, stream: Stream, bytes: Vec<u8>) {
        let _ = self.inner.events.send(Event::Line(stream, bytes));
    }

    /// Resolves once every line given to `send_now` so far has been written or handed over.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.events.send(Event::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// How lines are decorated.
pub struct Format {
    prefix_template: String,
    timestamps: bool,
    json: bool,
}

impl Format {
    pub fn new(logs: &Logs) -> Format {
        Format {
            prefix_template: logs.prefix.clone(),
            timestamps: logs.timestamps,
            json: logs.format == LogFormat::Json,
        }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    pub fn prefix(&self, name: &str) -> Vec<u8> {
        self.prefix_template.replace("{name}", name).into_bytes()
    }

    /// Appends one line (without its newline) to `out`.
    pub fn line(
        &self,
        out: &mut Vec<u8>,
        prefix: &[u8],
        name: &str,
        source: &str,
        piece: Piece,
        line: &[u8],
    ) {
        if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("time".into(), now().into());
            obj.insert("name".into(), name.into());
            obj.insert("stream".into(), source.into());
            obj.insert(
                "line".into(),
                String::from_utf8_lossy(line).into_owned().into(),
            );
            if let Piece::Part { index, last } = piece {
                obj.insert("part".into(), index.into());
                obj.insert("continued".into(), (!last).into());
            }
            let _ = serde_json::to_writer(&mut *out, &serde_json::Value::Object(obj));
            out.push(b'\n');
            return;
        }
        if self.timestamps {
            out.extend_from_slice(now().as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(prefix);
        out.extend_from_slice(line);
        if let Piece::Part { last: false, .. } = piece {
            out.extend_from_slice(CONTINUED.as_bytes());
        }
        out.push(b'\n');
    }
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Whether a framed line is whole or one piece of a long one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    Whole,
    Part { index: u32, last: bool },
}

/// Splits a byte stream into lines, cutting lines longer than `max` into numbered pieces.
pub struct Framer {
    pending: Vec<u8>,
    max: usize,
    /// Pieces of the current long line already emitted.
    parts: u32,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            pending: Vec::new(),
            max,
            parts: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(Piece, &[u8])) {
        while let Some(nl) = memchr::memchr(b'\n', data) {
            let (head, rest) = (&data[..nl], &data[nl + 1..]);
            if self.pending.is_empty() && self.parts == 0 && head.len() <= self.max {
                emit(Piece::Whole, head);
            } else {
                self.pending.extend_from_slice(head);
                self.flush_long(&mut emit);
                self.end_line(&mut emit);
            }
            data = rest;
        }
        self.pending.extend_from_slice(data);
        self.flush_long(&mut emit);
    }

    /// Delivers a final line that had no newline.
    pub fn finish(&mut self, mut emit: impl FnMut(Piece, &[u8])) {
        if !self.pending.is_empty() || self.parts > 0 {
            self.end_line(&mut emit);
        }
    }

    fn flush_long(&mut self, emit: &mut impl FnMut(Piece, &[u8])) {
        // Keep at least one byte back so the last piece is never empty.
        while self.pending.len() > self.max {
            self.parts += 1;
            emit(
                Piece::Part {
                    index: self.parts,
                    last: false,
                },
                &self.pending[..self.max],
            );
            self.pending.drain(..self.max);
        }
    }

    fn end_line(&mut self, emit: &mut impl FnMut(Piece, &[u8])) {
        let piece = if self.parts > 0 {
            Piece::Part {
                index: self.parts + 1,
                last: true,
            }
        } else {
            Piece::Whole
        };
        emit(piece, &self.pending);
        self.pending.clear();
        self.parts = 0;
    }
}

/// Fires once when a line matches (readiness `mode: log`).
pub struct LogWatch {
    pub regex: Regex,
    pub tx: oneshot::Sender<()>,
}

pub type SharedWatch = Arc<Mutex<Option<LogWatch>>>;

fn check_watch(watch: &SharedWatch, line: &[u8]) {
    let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
    if w.as_ref()
        .is_some_and(|w| w.regex.is_match(&String::from_utf8_lossy(line)))
        && let Some(w) = w.take()
    {
        let _ = w.tx.send(());
    }
}

/// The most lines a daemon's [`Ring`] keeps.
pub const RING_LINES: usize = 1000;
/// The most bytes of lines a daemon's [`Ring`] keeps.
pub const RING_BYTES: usize = 64 * 1024;

/// A daemon's recent lines, kept in memory for `tether ctl logs`: at most [`RING_LINES`] lines
/// and [`RING_BYTES`] bytes, the oldest dropped first. Bytes live in one buffer, so a chatty
/// daemon costs a copy per line and no allocation.
#[derive(Default)]
pub struct Ring {
    inner: Mutex<RingLines>,
    /// Woken after every batch, for followers.
    pub grew: tokio::sync::Notify,
}

#[derive(Default)]
struct RingLines {
    bytes: std::collections::VecDeque<u8>,
    /// Each line's length and stream, oldest first.
    lines: std::collections::VecDeque<(u32, &'static str)>,
    /// The number of the line after the last one kept (lines are numbered from 0).
    next: u64,
}

/// One line read back from a [`Ring`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingLine {
    pub number: u64,
    pub stream: &'static str,
    pub text: Vec<u8>,
}

impl RingLines {
    fn push(&mut self, stream: &'static str, line: &[u8]) {
        let line = &line[..line.len().min(RING_BYTES)];
        while !self.lines.is_empty()
            && (self.lines.len() >= RING_LINES || self.bytes.len() + line.len() > RING_BYTES)
        {
            let (len, _) = self.lines.pop_front().expect("not empty");
            self.bytes.drain(..len as usize);
        }
        self.bytes.extend(line);
        self.lines.push_back((line.len() as u32, stream));
        self.next += 1;
    }
}

impl Ring {
    /// Adds lines in one go (one lock per batch).
    pub fn with(&self, f: impl FnOnce(&mut dyn FnMut(&'static str, &[u8]))) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = r.next;
        f(&mut |stream, line| r.push(stream, line));
        let grew = r.next != before;
        drop(r);
        if grew {
            self.grew.notify_waiters();
        }
    }

    #[cfg(test)]
    pub fn push(&self, stream: &'static str, line: &[u8]) {
        self.with(|push| push(stream, line));
    }

    /// The last `tail` lines (all kept with `None`).
    pub fn tail(&self, tail: Option<usize>) -> Vec<RingLine> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let first = r.next - r.lines.len() as u64;
        let from = tail.map_or(first, |t| r.next.saturating_sub(t as u64).max(first));
        Self::read(&r, from)
    }

    /// The lines numbered `from` on; and how many between `from` and the oldest kept were
    /// dropped before they could be read.
    pub fn since(&self, from: u64) -> (Vec<RingLine>, u64) {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let first = r.next - r.lines.len() as u64;
        (Self::read(&r, from.max(first)), first.saturating_sub(from))
    }

    /// The number the next line will get.
    pub fn next(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    fn read(r: &RingLines, from: u64) -> Vec<RingLine> {
        let first = r.next - r.lines.len() as u64;
        let mut offset: usize = 0;
        let mut out = Vec::new();
        for (k, (len, stream)) in r.lines.iter().enumerate() {
            let number = first + k as u64;
            let len = *len as usize;
            if number >= from {
                out.push(RingLine {
                    number,
                    stream,
                    text: r.bytes.range(offset..offset + len).copied().collect(),
                });
            }
            offset += len;
        }
        out
    }
}

/// Who a pump writes for.
#[derive(Clone)]
pub struct Source {
    pub name: String,
    pub prefix: Vec<u8>,
    pub format: Arc<Format>,
    pub out: Output,
    /// Where the daemon's recent lines are kept (none for steps and tether's own lines).
    pub ring: Option<Arc<Ring>>,
}

impl Source {
    fn frame_into(&self, out: &mut Vec<u8>, stream: &str, piece: Piece, line: &[u8]) {
        self.format
            .line(out, &self.prefix, &self.name, stream, piece, line);
    }
}

/// Copies a child's pipe to the output until the child closes it.
pub async fn pump(fd: OwnedFd, source: Source, stream: &'static str, watch: Option<SharedWatch>) {
    // A chatty daemon gets a deep pipe and a big buffer (fewer wake-ups per byte); a quiet
    // one keeps a small buffer, so ten idle daemons cost little memory.
    let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut framer = Framer::new(MAX_LINE);
    let mut buf = vec![0u8; 4 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if n == buf.len() && buf.len() < MAX_READ {
            buf.resize(buf.len() * 2, 0);
        }
        let lines = memchr::memchr_iter(b'\n', &buf[..n]).count();
        let mut out = source
            .out
            .buffer(n + (lines + 1) * (source.prefix.len() + 1) + 64);
        with_ring(source.ring.as_deref(), |keep| {
            framer.push(&buf[..n], |piece, line| {
                if let Some(w) = &watch {
                    check_watch(w, line);
                }
                keep(stream, line);
                source.frame_into(&mut out, stream, piece, line);
            })
        });
        source.out.send(crate::logs::Stream::Stdout, out).await;
    }
    let mut out = Vec::new();
    with_ring(source.ring.as_deref(), |keep| {
        framer.finish(|piece, line| {
            if let Some(w) = &watch {
                check_watch(w, line);
            }
            keep(stream, line);
            source.frame_into(&mut out, stream, piece, line);
        })
    });
    source.out.send(Stream::Stdout, out).await;
}

/// Runs `f` with a function that keeps a line in `ring`, under one lock; with no ring, one
/// that does nothing.
fn with_ring(ring: Option<&Ring>, f: impl FnOnce(&mut dyn FnMut(&'static str, &[u8]))) {
    match ring {
        Some(r) => r.with(f),
        None => f(&mut |_, _| {}),
    }
}

/// Follows a log file like `tail -F`: from its end when it exists at start, from the beginning
/// when it appears later, across truncation (starts over) and rotation (drains the old file,
/// then reads the new one from the start). Driven by inotify on the file's directory.
pub fn follow(path: PathBuf, source: Source) -> impl std::future::Future<Output = ()> {
    // The file is opened and watched now, before the daemon's start is announced, so nothing
    // written after the announcement is missed.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let file_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let tail = Tail::open(&path, true);
    use inotify::WatchMask as M;
    let watch = inotify::Inotify::init().and_then(|i| {
        i.watches().add(
            &dir,
            M::MODIFY | M::CREATE | M::MOVED_TO | M::MOVED_FROM | M::DELETE | M::CLOSE_WRITE,
        )?;
        i.into_event_stream(vec![0u8; 4096])
    });
    if let Err(e) = &watch {
        tracing::warn!(
            "cannot watch {} for {}: {e}; it is read only when the daemon starts",
            dir.display(),
            path.display()
        );
    }
    follow_with(path, file_name, tail, watch.ok(), source)
}

async fn follow_with(
    path: PathBuf,
    file_name: std::ffi::OsString,
    mut tail: Tail,
    mut stream: Option<inotify::EventStream<Vec<u8>>>,
    source: Source,
) {
    use futures_util::StreamExt as _;
    let mut framer = Framer::new(MAX_LINE);
    loop {
        // Read whatever is there now, a step at a time, then wait for the next change.
        while let Some((bytes, file_ended)) = tail.read_new(&path) {
            let mut out = Vec::new();
            with_ring(source.ring.as_deref(), |keep| {
                framer.push(&bytes, |piece, line| {
                    keep("file", line);
                    source.frame_into(&mut out, "file", piece, line)
                });
                if file_ended {
                    framer.finish(|piece, line| {
                        keep("file", line);
                        source.frame_into(&mut out, "file", piece, line)
                    });
                }
            });
            source.out.send(Stream::Stdout, out).await;
            tokio::task::yield_now().await;
        }
        let Some(events) = stream.as_mut() else {
            return;
        };
        loop {
            match events.next().await {
                Some(Ok(ev)) if ev.name.as_deref() == Some(file_name.as_os_str()) => break,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    stream = None;
                    break;
                }
            }
        }
    }
}

/// The open file being followed.
struct Tail {
    file: Option<std::fs::File>,
    inode: u64,
    pos: u64,
}

impl Tail {
    fn open(path: &Path, at_end: bool) -> Tail {
        use std::os::unix::fs::MetadataExt;
        match std::fs::File::open(path) {
            Ok(f) => {
                let meta = f.metadata().ok();
                let inode = meta.as_ref().map_or(0, |m| m.ino());
                let pos = if at_end {
                    meta.map_or(0, |m| m.len())
                } else {
                    0
                };
                Tail {
                    file: Some(f),
                    inode,
                    pos,
                }
            }
            Err(_) => Tail {
                file: None,
                inode: 0,
                pos: 0,
            },
        }
    }

    /// New bytes, each batch flagged when it ends a file (rotation: its last line is complete).
    /// At most 1 MiB of new bytes (a large file is read across several turns of the event
    /// loop), flagged when they end a file that was rotated away (its last line is then
    /// complete). `None`: nothing new.
    fn read_new(&mut self, path: &Path) -> Option<(Vec<u8>, bool)> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        const STEP: u64 = 1024 * 1024;
        let current = std::fs::metadata(path).ok();
        let rotated =
            current.as_ref().is_some_and(|m| m.ino() != self.inode) || self.file.is_none();
        if let Some(f) = self.file.as_mut() {
            // Truncated in place: start over.
            if let Some(m) = current.as_ref().filter(|m| m.ino() == self.inode)
                && m.len() < self.pos
            {
                self.pos = 0;
            }
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(self.pos)).is_ok() {
                let _ = f.take(STEP).read_to_end(&mut buf);
            }
            self.pos += buf.len() as u64;
            if buf.len() as u64 == STEP {
                return Some((buf, false));
            }
            if !buf.is_empty() && !rotated {
                return Some((buf, false));
            }
            if rotated && current.is_some() {
                // The old file is drained: its last line ends here; the new one is read next.
                *self = Tail::open(path, false);
                return Some((buf, true));
            }
            return (!buf.is_empty()).then_some((buf, false));
        }
        if current.is_some() {
            *self = Tail::open(path, false);
            return Some((Vec::new(), false));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(max: usize, chunks: &[&[u8]]) -> Vec<(Piece, String)> {
        let mut f = Framer::new(max);
        let mut got = Vec::new();
        for c in chunks {
            f.push(c, |p, l| {
                got.push((p, String::from_utf8_lossy(l).into_owned()))
            });
        }
        f.finish(|p, l| got.push((p, String::from_utf8_lossy(l).into_owned())));
        got
    }

    #[test]
    fn lines_split_across_reads_are_joined_and_a_final_partial_line_is_kept() {
        assert_eq!(
            frame(100, &[b"one\ntw", b"o\nthr", b"ee"]),
            vec![
                (Piece::Whole, "one".into()),
                (Piece::Whole, "two".into()),
                (Piece::Whole, "three".into())
            ]
        );
    }

    #[test]
    fn long_lines_come_in_numbered_pieces() {
        assert_eq!(
            frame(4, &[b"abcdefghij\nxy\n"]),
            vec![
                (
                    Piece::Part {
                        index: 1,
                        last: false
                    },
                    "abcd".into()
                ),
                (
                    Piece::Part {
                        index: 2,
                        last: false
                    },
                    "efgh".into()
                ),
                (
                    Piece::Part {
                        index: 3,
                        last: true
                    },
                    "ij".into()
                ),
                (Piece::Whole, "xy".into()),
            ]
        );
        // Exactly the limit is still one whole line.
        assert_eq!(frame(4, &[b"abcd\n"]), vec![(Piece::Whole, "abcd".into())]);
    }

    #[test]
    fn the_ring_keeps_the_last_lines_within_its_bounds() {
        let ring = Ring::default();
        for k in 0..(RING_LINES + 5) {
            ring.push("stdout", format!("line {k}").as_bytes());
        }
        let all = ring.tail(None);
        assert_eq!(all.len(), RING_LINES);
        assert_eq!(all[0].number, 5);
        assert_eq!(all[0].text, b"line 5");
        let last: Vec<Vec<u8>> = ring.tail(Some(2)).into_iter().map(|l| l.text).collect();
        assert_eq!(last, [b"line 1003".to_vec(), b"line 1004".to_vec()]);
        // A follower that fell behind is told how many it missed.
        let (lines, missed) = ring.since(2);
        assert_eq!((lines.len(), missed), (RING_LINES, 3));
        assert_eq!(ring.since(ring.next()).0, []);

        // Bytes bound it too: four lines of a quarter of the ring, then one more byte.
        let ring = Ring::default();
        let quarter = vec![b'x'; RING_BYTES / 4];
        for _ in 0..4 {
            ring.push("stderr", &quarter);
        }
        ring.push("stderr", b"y");
        let kept = ring.tail(None);
        assert_eq!(kept.len(), 4);
        assert_eq!((kept[0].number, kept[3].text.as_slice()), (1, &b"y"[..]));
        assert_eq!(kept[3].stream, "stderr");
    }

    #[test]
    fn text_lines_get_the_prefix_and_json_lines_are_objects() {
        let logs = Logs {
            prefix: "[{name}] ".into(),
            timestamps: false,
            format: LogFormat::Text,
        };
        let f = Format::new(&logs);
        let mut out = Vec::new();
        f.line(
            &mut out,
            &f.prefix("web"),
            "web",
            "stdout",
            Piece::Whole,
            b"hi \xff",
        );
        f.line(
            &mut out,
            &f.prefix("web"),
            "web",
            "stdout",
            Piece::Part {
                index: 1,
                last: false,
            },
            b"ab",
        );
        assert_eq!(out, b"[web] hi \xff\n[web] ab\xe2\x86\xb5\n");

        let f = Format::new(&Logs {
            format: LogFormat::Json,
            ..logs
        });
        let mut out = Vec::new();
        f.line(&mut out, b"", "web", "stderr", Piece::Whole, b"hi \xff");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["name"], "web");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["line"], "hi \u{fffd}");
    }
}

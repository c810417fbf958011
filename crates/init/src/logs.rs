//! Output: every daemon line, prefixed, written whole by one writer thread.
//!
//! Readers (pipes and followed files) frame complete lines, prefix them and hand batches to the
//! writer over a bounded channel, so a slow consumer of tether's stdout slows the daemons down
//! instead of growing memory, and the supervisor's own loop never blocks on a write.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use regex::Regex;
use tether_spec::model::{LogFormat, Logs};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// Lines longer than this are delivered in pieces of this size, as Docker does.
pub const MAX_LINE: usize = 16 * 1024;
/// The largest read from a daemon's pipe.
const MAX_READ: usize = 256 * 1024;
/// The kernel buffer asked for on each daemon's pipe (the unprivileged maximum).
const PIPE_SIZE: i32 = 1024 * 1024;
/// Ends every piece of a long line but the last (text format).
pub const CONTINUED: &str = "\u{21b5}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Chunk {
    stream: Stream,
    bytes: Vec<u8>,
}

/// The handle readers write through. Cloning is cheap.
#[derive(Clone)]
pub struct Output {
    tx: mpsc::Sender<Chunk>,
}

/// Starts the writer thread. Dropping every `Output` lets it finish; join the handle to flush.
pub fn writer() -> (Output, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Chunk>(64);
    let handle = std::thread::Builder::new()
        .name("tether-out".into())
        .spawn(move || {
            let mut queued: Vec<Chunk> = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                queued.push(first);
                // What is already queued goes out in as few writes as possible, without copying.
                while queued.len() < 64 {
                    match rx.try_recv() {
                        Ok(c) => queued.push(c),
                        Err(_) => break,
                    }
                }
                let mut rest = &queued[..];
                while let Some(head) = rest.first() {
                    let same = rest.iter().take_while(|c| c.stream == head.stream).count();
                    let (run, tail) = rest.split_at(same);
                    // A closed stdout (EPIPE) must not stop the draining, or daemons would block.
                    let _ = match head.stream {
                        Stream::Stdout => write_chunks(&mut io::stdout().lock(), run),
                        Stream::Stderr => write_chunks(&mut io::stderr().lock(), run),
                    };
                    rest = tail;
                }
                queued.clear();
            }
        })
        .expect("the output thread starts");
    (Output { tx }, handle)
}

/// Writes every chunk whole, with vectored writes.
fn write_chunks(w: &mut impl Write, chunks: &[Chunk]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> =
        chunks.iter().map(|c| io::IoSlice::new(&c.bytes)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.flush()
}

impl Output {
    pub async fn send(&self, stream: Stream, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            let _ = self.tx.send(Chunk { stream, bytes }).await;
        }
    }

    /// For the supervisor's own short lines: never waits; a full queue waits in a task.
    pub fn send_now(&self, stream: Stream, bytes: Vec<u8>) {
        if let Err(mpsc::error::TrySendError::Full(c)) = self.tx.try_send(Chunk { stream, bytes }) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(c).await;
            });
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

/// Who a pump writes for.
#[derive(Clone)]
pub struct Source {
    pub name: String,
    pub prefix: Vec<u8>,
    pub format: Arc<Format>,
    pub out: Output,
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
        let mut out = Vec::with_capacity(n + n / 8 + 64);
        framer.push(&buf[..n], |piece, line| {
            if let Some(w) = &watch {
                check_watch(w, line);
            }
            source.frame_into(&mut out, stream, piece, line);
        });
        source.out.send(crate::logs::Stream::Stdout, out).await;
    }
    let mut out = Vec::new();
    framer.finish(|piece, line| {
        if let Some(w) = &watch {
            check_watch(w, line);
        }
        source.frame_into(&mut out, stream, piece, line);
    });
    source.out.send(Stream::Stdout, out).await;
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
        // Read whatever is there now, then wait for the next change in the directory.
        for (bytes, file_ended) in tail.read_new(&path) {
            let mut out = Vec::new();
            framer.push(&bytes, |piece, line| {
                source.frame_into(&mut out, "file", piece, line)
            });
            if file_ended {
                framer.finish(|piece, line| source.frame_into(&mut out, "file", piece, line));
            }
            source.out.send(Stream::Stdout, out).await;
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
    fn read_new(&mut self, path: &Path) -> Vec<(Vec<u8>, bool)> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let mut batches = Vec::new();
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
            if f.seek(SeekFrom::Start(self.pos)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                self.pos += buf.len() as u64;
            }
            if !buf.is_empty() || rotated {
                batches.push((buf, rotated));
            }
        }
        if rotated && current.is_some() {
            *self = Tail::open(path, false);
            let mut more = self.read_new(path);
            batches.append(&mut more);
        }
        batches
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

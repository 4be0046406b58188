//! One material disk: its index, its health, and the thread that writes
//! segments to it.
//!
//! Each disk has its own writer thread fed by a bounded queue, so a slow or
//! failing disk holds up only its own segments; camera tasks never wait for
//! it (a frame that does not fit the queue is dropped and counted). A segment
//! is written as `NAME.part`, synced, renamed to `NAME`, and only then listed
//! in the disk's index (appended and synced): the index never names a file
//! that is not complete.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

use super::index::{self, Entry, Inventory, Line, SegmentName};
use super::ts::TsWriter;
use crate::media::Codec;
use crate::metrics::RecordMetrics;

/// Queued frames per disk are bounded by their bytes: a disk that stalls
/// this long at the server's whole bitrate loses material, not memory.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Jobs in a disk's queue (frames and closes).
const QUEUE_JOBS: usize = 16_384;
/// Bytes muxed for one segment before they are written out.
const WRITE_CHUNK: usize = 256 << 10;
/// A segment that got no frame for this long is closed (its camera stopped,
/// or its close was dropped with a full queue).
const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// Directory under a disk's mount point that mcrelay owns.
pub const ROOT: &str = "mcrelay";
const INDEX: &str = "index.jsonl";
const PROBE: &str = ".probe";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskStatus {
    Ok,
    /// The path does not exist or is not a directory (not mounted).
    Missing,
    /// Writing fails (read-only, I/O errors, permissions).
    Unwritable,
    /// No room, and retention cannot make any.
    Full,
}

impl DiskStatus {
    pub fn broken(self) -> bool {
        self != DiskStatus::Ok
    }
}

/// What a writer thread is asked to do.
pub enum Job {
    Frame(Box<FrameJob>),
    /// Finish the channel's segment `start_ms`.
    Close {
        channel: u32,
        start_ms: i64,
    },
    Shutdown,
}

pub struct FrameJob {
    pub channel: u32,
    pub segment: SegmentName,
    pub codec: Codec,
    pub nals: Vec<Bytes>,
    /// Parameter sets to write before a key frame that lacks them.
    pub params: Vec<Bytes>,
    pub key: bool,
    /// Media time, 90 kHz.
    pub time: i64,
    pub bytes: usize,
    pub metrics: RecordMetrics,
}

pub struct DiskState {
    pub status: DiskStatus,
    pub reason: String,
    pub entries: Inventory,
    index: Option<File>,
    pub used_percent: f64,
    pub available: u64,
}

impl DiskState {
    fn empty() -> Self {
        DiskState {
            status: DiskStatus::Ok,
            reason: String::new(),
            entries: Inventory::new(),
            index: None,
            used_percent: 0.0,
            available: 0,
        }
    }
}

pub struct Disk {
    pub path: PathBuf,
    pub root: PathBuf,
    /// The disk was a mount point when the server started: when it stops
    /// being one it was unmounted, and what is left is the directory on
    /// the file system below, which must not fill up with material.
    mount_point: bool,
    /// An exclusive lock on the disk's mcrelay directory, held while the
    /// server runs: two processes must not write one index.
    lock: Mutex<Option<File>>,
    state: Mutex<DiskState>,
    queue: Mutex<Option<SyncSender<Job>>>,
    queued: AtomicUsize,
}

fn errno_status(e: &io::Error) -> DiskStatus {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => DiskStatus::Full,
        _ => DiskStatus::Unwritable,
    }
}

impl Disk {
    /// Opens a disk: replays and repairs its index, discards what a crash
    /// left half-written. A disk that cannot be used comes back broken, with
    /// the reason.
    pub fn open(path: &Path) -> Arc<Disk> {
        let root = path.join(ROOT);
        let mut state = DiskState::empty();
        let lock = lock(&root);
        let loaded = match &lock {
            Ok(_) => load(path, &root, &mut state),
            Err(e) => Err(e.clone()),
        };
        if let Err((status, reason)) = loaded {
            tracing::error!(disk = %path.display(), ?status, "material disk unusable: {reason}");
            state.status = status;
            state.reason = reason;
        }
        Arc::new(Disk {
            lock: Mutex::new(lock.ok()),
            mount_point: is_mount_point(path),
            path: path.to_path_buf(),
            root,
            state: Mutex::new(state),
            queue: Mutex::new(None),
            queued: AtomicUsize::new(0),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> DiskStatus {
        self.state().status
    }

    pub fn mark(&self, status: DiskStatus, reason: String) {
        let mut st = self.state();
        if st.status != status {
            if status.broken() {
                tracing::error!(disk = %self.path.display(), ?status, "material disk broken: {reason}");
            } else {
                tracing::info!(disk = %self.path.display(), "material disk usable again");
            }
        }
        st.status = status;
        st.reason = reason;
    }

    pub fn segment_path(&self, channel: u32, name: &SegmentName) -> PathBuf {
        self.root
            .join(format!("ch{channel}"))
            .join(name.to_string())
    }

    /// Starts the writer thread.
    pub fn start(self: &Arc<Self>) -> io::Result<std::thread::JoinHandle<()>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_JOBS);
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let disk = self.clone();
        std::thread::Builder::new()
            .name("mcrelay-disk".into())
            .spawn(move || Writer::new(disk).run(rx))
    }

    /// Queues a job without waiting; false when it did not fit.
    pub fn offer(&self, job: Job) -> bool {
        let bytes = match &job {
            Job::Frame(f) => f.bytes,
            _ => 0,
        };
        // Counted before the send: the writer may take the job and subtract
        // its bytes before this thread runs again.
        if self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sent = q.as_ref().is_some_and(|tx| match tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        });
        if !sent {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        sent
    }

    /// Asks the writer to finish its segments and stop (waits for room).
    pub fn shutdown(&self) {
        if let Some(tx) = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(Job::Shutdown);
        }
    }

    /// Appends index lines and syncs them; the caller holds the state.
    fn append(&self, st: &mut DiskState, lines: &[Line]) -> io::Result<()> {
        if st.index.is_none() {
            st.index = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.root.join(INDEX))?,
            );
        }
        let text: String = lines.iter().map(Line::to_line).collect();
        let f = st.index.as_mut().expect("opened above");
        f.write_all(text.as_bytes())?;
        f.sync_data()
    }

    /// Lists a complete segment.
    pub fn add(&self, entry: Entry) -> io::Result<()> {
        let mut st = self.state();
        self.append(&mut st, &[Line::Add(entry.clone())])?;
        st.entries
            .insert((entry.channel, entry.segment.clone()), entry);
        Ok(())
    }

    /// Unlists segments, then deletes their files.
    pub fn remove(&self, keys: &[(u32, String)]) -> io::Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut st = self.state();
        let lines: Vec<Line> = keys
            .iter()
            .map(|(channel, segment)| Line::Remove {
                channel: *channel,
                segment: segment.clone(),
            })
            .collect();
        self.append(&mut st, &lines)?;
        let mut freed = 0;
        for k in keys {
            if let Some(e) = st.entries.remove(k) {
                freed += e.bytes;
                let name = SegmentName::parse(&e.segment).expect("indexed names parse");
                let _ = fs::remove_file(self.segment_path(e.channel, &name));
            }
        }
        Ok(freed)
    }

    /// Checks that the disk is there and takes a write, measures its usage,
    /// and applies retention. Called every few seconds.
    pub fn check(&self, retention_before_ms: Option<i64>, max_used_percent: f64) {
        if !self.path.is_dir() {
            self.mark(
                DiskStatus::Missing,
                format!("{} is not a directory (not mounted?)", self.path.display()),
            );
            return;
        }
        if self.mount_point && !is_mount_point(&self.path) {
            self.mark(
                DiskStatus::Missing,
                format!(
                    "{} is no longer a mount point (unmounted?)",
                    self.path.display()
                ),
            );
            return;
        }
        // Not ours until locked (another process held it, or it was missing
        // at start).
        let mut first_lock = false;
        {
            let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            if held.is_none() {
                match lock(&self.root) {
                    Ok(f) => {
                        *held = Some(f);
                        first_lock = true;
                    }
                    Err((status, reason)) => {
                        drop(held);
                        self.mark(status, reason);
                        return;
                    }
                }
            }
        }
        // A disk that is full still gets retention, which may make room.
        let mut no_room = false;
        if let Err(e) = probe(&self.root) {
            let reason = format!("cannot write to {}: {e}", self.root.display());
            if errno_status(&e) != DiskStatus::Full {
                self.mark(DiskStatus::Unwritable, reason);
                return;
            }
            no_room = true;
        }
        let was_missing = first_lock || self.status() == DiskStatus::Missing;
        if was_missing {
            // Mounted again: read what it holds.
            let mut st = DiskState::empty();
            if let Err((status, reason)) = load(&self.path, &self.root, &mut st) {
                self.mark(status, reason);
                return;
            }
            *self.state() = st;
        }
        // Retention: by age, then by usage.
        if let Some(before) = retention_before_ms {
            let old: Vec<(u32, String)> = self
                .state()
                .entries
                .iter()
                .filter(|(_, e)| e.end_ms < before)
                .map(|(k, _)| k.clone())
                .collect();
            if !old.is_empty() {
                tracing::info!(disk = %self.path.display(), segments = old.len(), "deleting material past its retention");
                let _ = self.remove(&old);
            }
        }
        let mut usage = match usage(&self.path) {
            Ok(u) => u,
            Err(e) => {
                self.mark(DiskStatus::Unwritable, format!("statvfs failed: {e}"));
                return;
            }
        };
        if usage.0 > max_used_percent {
            // Oldest first, across channels, down to a point below the limit.
            let mut all: Vec<(i64, (u32, String), u64)> = self
                .state()
                .entries
                .iter()
                .map(|(k, e)| (e.start_ms, k.clone(), e.bytes))
                .collect();
            all.sort();
            let total = usage.2 as f64;
            let target = (max_used_percent - 1.0).max(0.0) / 100.0 * total;
            let mut used = usage.0 / 100.0 * total;
            let mut doomed = Vec::new();
            for (_, k, bytes) in all {
                if used <= target {
                    break;
                }
                used -= bytes as f64;
                doomed.push(k);
            }
            if !doomed.is_empty() {
                tracing::warn!(disk = %self.path.display(), segments = doomed.len(), "disk over its usage limit: deleting the oldest material");
                let _ = self.remove(&doomed);
                usage = self::usage(&self.path).unwrap_or(usage);
            }
        }
        {
            let mut st = self.state();
            st.used_percent = usage.0;
            st.available = usage.1;
        }
        if no_room && let Err(e) = probe(&self.root) {
            self.mark(
                errno_status(&e),
                format!(
                    "cannot write to {} even after deleting the oldest material: {e}",
                    self.root.display()
                ),
            );
        } else if usage.0 > max_used_percent + 0.5 {
            self.mark(
                DiskStatus::Full,
                format!(
                    "{:.1}% used, over the {max_used_percent}% limit, and no material left to delete",
                    usage.0
                ),
            );
        } else {
            self.mark(DiskStatus::Ok, String::new());
        }
    }
}

const LOCK: &str = ".lock";

/// Takes the disk's lock (see [`Disk`]); the error says who holds it.
fn lock(root: &Path) -> Result<File, (DiskStatus, String)> {
    use std::os::fd::AsRawFd as _;
    if !root.parent().is_some_and(Path::is_dir) {
        return Err((
            DiskStatus::Missing,
            format!(
                "{} is not a directory (not mounted?)",
                root.parent().unwrap_or(root).display()
            ),
        ));
    }
    let f = fs::create_dir_all(root)
        .and_then(|()| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(root.join(LOCK))
        })
        .map_err(|e| {
            (
                errno_status(&e),
                format!("cannot open {}: {e}", root.join(LOCK).display()),
            )
        })?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = fs::read_to_string(root.join(LOCK)).unwrap_or_default();
        return Err((
            DiskStatus::Unwritable,
            format!(
                "{} is in use by another mcrelay process ({})",
                root.display(),
                holder.trim()
            ),
        ));
    }
    let mut f = f;
    let _ = f.set_len(0);
    let _ = writeln!(f, "pid {}", std::process::id());
    Ok(f)
}

/// Whether another process records on this disk now.
pub fn in_use(disk: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    let Ok(f) = File::open(disk.join(ROOT).join(LOCK)) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; released on drop.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// A directory on another file system than its parent.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let parent = path.parent().unwrap_or(path);
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// (used percent, available bytes, total bytes) of the file system.
fn usage(path: &Path) -> io::Result<(f64, u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; c is a valid
    // NUL-terminated string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frag = s.f_frsize;
    let total = s.f_blocks * frag;
    let avail = s.f_bavail * frag;
    let free = s.f_bfree * frag;
    // As df counts: used / (used + available to users).
    let used = total.saturating_sub(free);
    let pct = if used + avail == 0 {
        100.0
    } else {
        100.0 * used as f64 / (used + avail) as f64
    };
    Ok((pct, avail, total))
}

/// Creates, writes, syncs and deletes a small file.
fn probe(root: &Path) -> io::Result<()> {
    fs::create_dir_all(root)?;
    let p = root.join(PROBE);
    let mut f = File::create(&p)?;
    f.write_all(b"mcrelay")?;
    f.sync_data()?;
    drop(f);
    fs::remove_file(&p)
}

/// Reads a disk's index and repairs the disk after a crash: cuts a torn
/// last line, drops entries whose file is gone or has the wrong size,
/// deletes files in progress (`.part`) and files the index does not list.
fn load(path: &Path, root: &Path, st: &mut DiskState) -> Result<(), (DiskStatus, String)> {
    if !path.is_dir() {
        return Err((
            DiskStatus::Missing,
            format!("{} is not a directory (not mounted?)", path.display()),
        ));
    }
    let broken = |e: io::Error, what: &str| (errno_status(&e), format!("{what}: {e}"));
    probe(root).map_err(|e| broken(e, &format!("cannot write to {}", root.display())))?;
    let index_path = root.join(INDEX);
    let mut data = Vec::new();
    match File::open(&index_path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)
                .map_err(|e| broken(e, &format!("cannot read {}", index_path.display())))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(broken(e, &format!("cannot read {}", index_path.display()))),
    }
    let replayed = index::replay(&data);
    for p in &replayed.problems {
        tracing::warn!(index = %index_path.display(), line = p.line, "{}", p.what);
    }
    let mut entries = replayed.entries;
    // Every listed file must be there, whole.
    let mut dropped = 0;
    entries.retain(|_, e| {
        let name = SegmentName::parse(&e.segment).expect("replay checked the name");
        let file = root.join(format!("ch{}", e.channel)).join(name.to_string());
        let ok = fs::metadata(&file).is_ok_and(|m| m.len() == e.bytes);
        if !ok {
            tracing::warn!(file = %file.display(), "indexed segment missing or of the wrong size; unlisted");
            dropped += 1;
        }
        ok
    });
    // Files the index does not list: in progress at a crash, or renamed
    // just before one (its index line never written).
    if let Ok(dirs) = fs::read_dir(root) {
        for d in dirs.flatten() {
            let Some(channel) = d
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("ch"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(files) = fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !entries.contains_key(&(channel, name.clone())) {
                    tracing::warn!(file = %f.path().display(), "discarding a segment that was being written when the server stopped");
                    let _ = fs::remove_file(f.path());
                }
            }
        }
    }
    // Rewrite the index when it holds dead lines or damage.
    if dropped > 0
        || !replayed.problems.is_empty()
        || replayed.lines > 2 * entries.len() + 1000
        || replayed.valid_len != data.len()
    {
        let tmp = root.join(format!("{INDEX}.tmp"));
        let text: String = entries
            .values()
            .map(|e| Line::Add(e.clone()).to_line())
            .collect();
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &index_path)?;
            File::open(root)?.sync_all()
        };
        write().map_err(|e| broken(e, &format!("cannot rewrite {}", index_path.display())))?;
    }
    st.entries = entries;
    Ok(())
}

/// A segment being written.
struct Open {
    name: SegmentName,
    part: PathBuf,
    file: File,
    ts: TsWriter,
    buf: Vec<u8>,
    hash: Xxh3,
    bytes: u64,
    first_time: i64,
    last_time: i64,
    /// Last frame interval seen (the last frame's duration).
    interval: i64,
    last_frame: Instant,
    metrics: RecordMetrics,
}

struct Writer {
    disk: Arc<Disk>,
    open: HashMap<u32, Open>,
    /// Segments that failed: their remaining frames are dropped.
    failed: HashMap<u32, i64>,
}

impl Writer {
    fn new(disk: Arc<Disk>) -> Self {
        Writer {
            disk,
            open: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Job::Frame(f)) => {
                    self.disk.queued.fetch_sub(f.bytes, Ordering::Relaxed);
                    self.frame(*f);
                }
                Ok(Job::Close { channel, start_ms }) => {
                    if self
                        .open
                        .get(&channel)
                        .is_some_and(|o| o.name.start_ms == start_ms)
                    {
                        self.close(channel);
                    }
                }
                Ok(Job::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let idle: Vec<u32> = self
                .open
                .iter()
                .filter(|(_, o)| o.last_frame.elapsed() >= IDLE_CLOSE)
                .map(|(c, _)| *c)
                .collect();
            for c in idle {
                self.close(c);
            }
        }
        let all: Vec<u32> = self.open.keys().copied().collect();
        for c in all {
            self.close(c);
        }
    }

    fn frame(&mut self, f: FrameJob) {
        if self.failed.get(&f.channel) == Some(&f.segment.start_ms) {
            f.metrics.dropped_frames.inc();
            return;
        }
        if self
            .open
            .get(&f.channel)
            .is_some_and(|o| o.name != f.segment)
        {
            self.close(f.channel);
        }
        if !self.open.contains_key(&f.channel) {
            match self.create(&f) {
                Ok(o) => {
                    self.open.insert(f.channel, o);
                }
                Err(e) => {
                    self.fail(f.channel, f.segment.start_ms, &e, "cannot create a segment");
                    f.metrics.dropped_frames.inc();
                    return;
                }
            }
        }
        let o = self.open.get_mut(&f.channel).expect("inserted above");
        let pts = f.time.rem_euclid(1 << 33) as u64;
        o.ts.write_au(&f.nals, f.key, &f.params, pts, &mut o.buf);
        if f.time > o.last_time {
            o.interval = f.time - o.last_time;
        }
        o.last_time = f.time;
        o.last_frame = Instant::now();
        o.metrics.frames.inc();
        if o.buf.len() >= WRITE_CHUNK
            && let Err(e) = flush(o)
        {
            let start = o.name.start_ms;
            self.discard(f.channel);
            self.fail(f.channel, start, &e, "cannot write a segment");
        }
    }

    fn create(&self, f: &FrameJob) -> io::Result<Open> {
        let path = self.disk.segment_path(f.channel, &f.segment);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let part = path.with_extension("ts.part");
        let file = File::create(&part)?;
        Ok(Open {
            name: f.segment.clone(),
            part,
            file,
            ts: TsWriter::new(f.codec),
            buf: Vec::with_capacity(WRITE_CHUNK + 64 * 1024),
            hash: Xxh3::new(),
            bytes: 0,
            first_time: f.time,
            last_time: f.time,
            interval: 3600,
            last_frame: Instant::now(),
            metrics: f.metrics.clone(),
        })
    }

    fn fail(&mut self, channel: u32, start_ms: i64, e: &io::Error, what: &str) {
        self.failed.insert(channel, start_ms);
        self.disk.mark(
            errno_status(e),
            format!("{what} in {}: {e}", self.disk.root.display()),
        );
    }

    fn discard(&mut self, channel: u32) {
        if let Some(o) = self.open.remove(&channel) {
            let _ = fs::remove_file(&o.part);
        }
    }

    /// Finishes a segment: flush, sync, rename, list.
    fn close(&mut self, channel: u32) {
        let Some(mut o) = self.open.remove(&channel) else {
            return;
        };
        let res = (|| -> io::Result<Entry> {
            flush(&mut o)?;
            o.file.sync_all()?;
            let path = o.part.with_extension("");
            fs::rename(&o.part, &path)?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            let media_ms = (o.last_time - o.first_time + o.interval) / 90;
            Ok(Entry {
                channel,
                segment: o.name.to_string(),
                start_ms: o.name.start_ms,
                end_ms: o.name.start_ms + media_ms,
                bytes: o.bytes,
                checksum: index::checksum_string(o.hash.digest()),
                recorder: o.name.recorder.clone(),
            })
        })();
        match res.and_then(|e| self.disk.add(e)) {
            Ok(()) => {
                o.metrics.segments.inc();
            }
            Err(e) => {
                let _ = fs::remove_file(&o.part);
                let _ = fs::remove_file(o.part.with_extension(""));
                self.fail(channel, o.name.start_ms, &e, "cannot finish a segment");
            }
        }
    }
}

fn flush(o: &mut Open) -> io::Result<()> {
    if o.buf.is_empty() {
        return Ok(());
    }
    o.file.write_all(&o.buf)?;
    o.hash.update(&o.buf);
    o.bytes += o.buf.len() as u64;
    o.metrics.bytes.inc_by(o.buf.len() as u64);
    o.buf.clear();
    Ok(())
}

//! One material disk: its index, its health, and the thread that writes
//! segments to it.
//!
//! Each disk has its own writer thread fed by a bounded queue, so a slow or
//! failing disk holds up only its own segments; camera tasks never wait for
//! it (a frame that does not fit the queue is dropped and counted). A segment
//! is written as `NAME.part`, synced, renamed to `NAME`, and only then listed
//! in the disk's index (appended and synced): the index never names a file
//! that is not complete.
//!
//! Locks: camera tasks read the disk's status from an atomic and queue jobs
//! with `try_send`; they never take a lock that is held across disk I/O.
//! `state` (the inventory, for listings) is held only to read or change
//! memory; `index` is held across index appends and syncs, by the writer,
//! health and upload threads only.
//!
//! Recorded material is never deleted by a repair: at start only `.part`
//! files (segments in progress at a crash) are removed. A complete segment
//! the index does not list (renamed just before a crash, its line torn or
//! lost, or the whole index lost) is indexed again from the file itself.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

use super::index::{self, Entry, Inventory, Line, SegmentName};
use super::reorder::DtsClock;
use super::ts::{TsScanner, TsWriter};
use crate::media::Codec;
use crate::metrics::RecordMetrics;

/// Jobs in a disk's queue (frames and closes).
const QUEUE_JOBS: usize = 16_384;
/// Bytes muxed for one segment before they are written out.
const WRITE_CHUNK: usize = 256 << 10;
/// A segment that got no frame for this long is closed (its camera stopped,
/// or its close was dropped with a full queue).
const IDLE_CLOSE: Duration = Duration::from_secs(5);
/// A frame's media time may run ahead of the time it took to arrive by this
/// much, or behind the previous frame's by this much, before the segment's
/// times are taken from the wall clock (a camera clock that jumped).
const MAX_MEDIA_DRIFT_MS: i64 = 1000;

/// Directory under a disk's mount point that mcrelay owns.
pub const ROOT: &str = "mcrelay";
const INDEX: &str = "index.jsonl";
const PROBE: &str = ".probe";
/// Files in progress end with this; they alone are removed at start.
pub const PART: &str = ".part";

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

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> DiskStatus {
        match v {
            0 => DiskStatus::Ok,
            1 => DiskStatus::Missing,
            2 => DiskStatus::Unwritable,
            _ => DiskStatus::Full,
        }
    }
}

/// What a writer thread is asked to do.
pub enum Job {
    Frame(Box<FrameJob>),
    /// An AAC frame or a metadata document for the channel's segment, if
    /// that segment is open and has the stream.
    Track(Box<TrackJob>),
    /// Finish the channel's segment `start_ms`.
    Close {
        channel: u32,
        start_ms: i64,
    },
    Shutdown,
}

pub struct TrackJob {
    pub channel: u32,
    pub segment: SegmentName,
    /// Audio (AAC) or metadata.
    pub kind: crate::media::TrackKind,
    pub data: Bytes,
    /// Media time, 90 kHz, on the video's time line.
    pub time: i64,
}

pub struct FrameJob {
    pub channel: u32,
    pub segment: SegmentName,
    pub codec: Codec,
    /// The camera's AAC stream, for a segment this frame starts: its
    /// segment gets an audio stream.
    pub audio: Option<crate::record::ts::Adts>,
    /// The camera's metadata stream, for a segment this frame starts.
    pub metadata: bool,
    /// The camera's audio MPEG-TS has no stream type for (its rtpmap), for
    /// a segment this frame starts.
    pub raw_audio: Option<std::sync::Arc<str>>,
    /// The stream's reorder depth (B-frames), for a segment this frame
    /// starts: its decode times follow it.
    pub reorder: u8,
    pub nals: Vec<Bytes>,
    /// Parameter sets to write before a key frame that lacks them.
    pub params: Vec<Bytes>,
    pub key: bool,
    /// Media time, 90 kHz.
    pub time: i64,
    /// When the frame was received, ms since the Unix epoch.
    pub wall_ms: i64,
    pub bytes: usize,
    pub metrics: RecordMetrics,
}

/// A disk's inventory and usage, as listings and `/status` read them.
pub struct DiskState {
    pub reason: String,
    pub entries: Inventory,
    pub used_percent: f64,
    pub available: u64,
    pub total: u64,
}

impl DiskState {
    fn empty() -> Self {
        DiskState {
            reason: String::new(),
            entries: Inventory::new(),
            used_percent: 0.0,
            available: 0,
            total: 0,
        }
    }
}

/// The open index file.
#[derive(Default)]
struct IndexFile {
    file: Option<File>,
    /// Bytes of whole lines in the file.
    len: u64,
    /// The file may end in a fragment (an append that failed and could not
    /// be cut off): the next append starts on a new line.
    torn: bool,
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
    status: AtomicU8,
    state: Mutex<DiskState>,
    index: Mutex<IndexFile>,
    queue: Mutex<Option<SyncSender<Job>>>,
    queued: AtomicUsize,
    /// Queued frames are bounded by their bytes (`storage.write_buffer_mb`):
    /// a disk that falls this far behind loses material, not memory.
    queue_bytes: usize,
}

/// How an I/O error bears on the disk. `None`: the process, not the disk,
/// is short of something (descriptors, memory): the disk is not broken,
/// and must not be reported so (that is a failover trigger).
fn errno_status(e: &io::Error) -> Option<DiskStatus> {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => Some(DiskStatus::Full),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR) => None,
        _ => Some(DiskStatus::Unwritable),
    }
}

/// Syncs a directory, so that names created or renamed in it survive a
/// crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Disk {
    /// Opens a disk: replays and repairs its index, discards what a crash
    /// left half-written, indexes complete segments the index lacks. A disk
    /// that cannot be used comes back broken, with the reason.
    pub fn open(path: &Path, queue_bytes: usize) -> Arc<Disk> {
        let root = path.join(ROOT);
        let mut state = DiskState::empty();
        let mut status = DiskStatus::Ok;
        let lock = lock(&root);
        let loaded = match &lock {
            Ok(_) => load(path, &root).map(|entries| state.entries = entries),
            Err(e) => Err(e.clone()),
        };
        if let Err((st, reason)) = loaded {
            tracing::error!(disk = %path.display(), status = ?st, "material disk unusable: {reason}");
            status = st;
            state.reason = reason;
        }
        Arc::new(Disk {
            lock: Mutex::new(lock.ok()),
            mount_point: is_mount_point(path),
            path: path.to_path_buf(),
            root,
            status: AtomicU8::new(status.to_u8()),
            state: Mutex::new(state),
            index: Mutex::new(IndexFile::default()),
            queue: Mutex::new(None),
            queued: AtomicUsize::new(0),
            queue_bytes,
        })
    }

    /// The inventory; held only to read or change memory.
    pub fn state(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index(&self) -> MutexGuard<'_, IndexFile> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock-free: camera tasks ask this for every frame.
    pub fn status(&self) -> DiskStatus {
        DiskStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    pub fn mark(&self, status: DiskStatus, reason: String) {
        let mut st = self.state();
        let old = self.status.swap(status.to_u8(), Ordering::Relaxed);
        if old != status.to_u8() {
            if status.broken() {
                tracing::error!(disk = %self.path.display(), ?status, "material disk broken: {reason}");
            } else {
                tracing::info!(disk = %self.path.display(), "material disk usable again");
            }
        }
        st.reason = reason;
    }

    /// An error from the process, not the disk: logged, the status kept.
    fn process_error(&self, what: &str, e: &io::Error) {
        tracing::warn!(disk = %self.path.display(), error = %e, "{what}: the process is short of resources, not the disk; its status is unchanged");
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
            Job::Track(t) => t.data.len(),
            _ => 0,
        };
        // Counted before the send: the writer may take the job and subtract
        // its bytes before this thread runs again.
        if self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > self.queue_bytes {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sent = q.as_ref().is_some_and(|tx| match tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        });
        drop(q);
        if !sent {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        sent
    }

    /// Asks the writer to finish its segments and stop (waits for room in
    /// its queue, without holding the queue's lock).
    pub fn shutdown(&self) {
        let tx = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Job::Shutdown);
        }
    }

    /// Appends index lines and syncs them. An append that fails is cut off
    /// again, so the next one starts on a line of its own.
    fn append(&self, ix: &mut IndexFile, lines: &[Line]) -> io::Result<()> {
        if ix.file.is_none() {
            let path = self.root.join(INDEX);
            let existed = path.exists();
            let mut f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            if !existed {
                // The index's own name must survive a crash too.
                sync_dir(&self.root)?;
            }
            ix.len = f.seek(SeekFrom::End(0))?;
            ix.torn = ix.len > 0 && {
                let mut last = [0u8];
                f.seek(SeekFrom::End(-1))?;
                f.read_exact(&mut last)?;
                last[0] != b'\n'
            };
            ix.file = Some(f);
        }
        let mut text = String::new();
        if ix.torn {
            text.push('\n');
        }
        text.extend(lines.iter().map(Line::to_line));
        let f = ix.file.as_mut().expect("opened above");
        match f.write_all(text.as_bytes()).and_then(|()| f.sync_data()) {
            Ok(()) => {
                ix.len += text.len() as u64;
                ix.torn = false;
                Ok(())
            }
            Err(e) => {
                // Cut the fragment; if even that fails, the next append
                // begins with a newline (and replay skips the fragment).
                ix.torn = f.set_len(ix.len).is_err();
                Err(e)
            }
        }
    }

    /// Lists a complete segment.
    pub fn add(&self, entry: Entry) -> io::Result<()> {
        self.append(&mut self.index(), &[Line::Add(entry.clone())])?;
        self.state()
            .entries
            .insert((entry.channel, entry.segment.clone()), entry);
        Ok(())
    }

    /// Lists a segment received from another server (its file complete at
    /// `part`): renamed into place and listed unless a segment of that name
    /// is listed already (then `part` is removed and `false` returned), all
    /// under the index lock, so two uploads of one name cannot both list.
    pub fn import(&self, part: &Path, path: &Path, entry: Entry) -> io::Result<bool> {
        let mut ix = self.index();
        let key = (entry.channel, entry.segment.clone());
        if self.state().entries.contains_key(&key) {
            let _ = fs::remove_file(part);
            return Ok(false);
        }
        fs::rename(part, path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        if let Err(e) = self.append(&mut ix, &[Line::Add(entry.clone())]) {
            // The file is complete: the next start indexes it from itself.
            tracing::warn!(file = %path.display(), error = %e, "copied segment stored but not indexed; it is indexed from its file at the next start");
        }
        self.state().entries.insert(key, entry);
        Ok(true)
    }

    /// Unlists segments and deletes their files. Files first, then the
    /// index lines: a full disk can always free space (the lines need room),
    /// and a line for a file that is gone is dropped at the next start.
    pub fn remove(&self, keys: &[(u32, String)]) -> u64 {
        let victims: Vec<Entry> = {
            let mut st = self.state();
            keys.iter().filter_map(|k| st.entries.remove(k)).collect()
        };
        if victims.is_empty() {
            return 0;
        }
        let mut freed = 0;
        let mut lines = Vec::with_capacity(victims.len());
        for e in &victims {
            let file = self.root.join(format!("ch{}", e.channel)).join(&e.segment);
            match fs::remove_file(&file) {
                Ok(()) => freed += e.bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(file = %file.display(), error = %err, "cannot delete a segment");
                }
            }
            lines.push(Line::Remove {
                channel: e.channel,
                segment: e.segment.clone(),
            });
        }
        if let Err(e) = self.append(&mut self.index(), &lines) {
            tracing::warn!(disk = %self.path.display(), error = %e, "cannot note deleted segments in the index; the next start drops them");
        }
        freed
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
            match errno_status(&e) {
                None => {
                    self.process_error("disk check", &e);
                    return;
                }
                Some(DiskStatus::Full) => no_room = true,
                Some(st) => {
                    self.mark(st, reason);
                    return;
                }
            }
        }
        let was_missing = first_lock || self.status() == DiskStatus::Missing;
        if was_missing {
            // Mounted again: read what it holds.
            match load(&self.path, &self.root) {
                Ok(entries) => self.state().entries = entries,
                Err((status, reason)) => {
                    self.mark(status, reason);
                    return;
                }
            }
            *self.index() = IndexFile::default();
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
                self.remove(&old);
            }
        }
        let mut usage = match usage(&self.path) {
            Ok(u) => u,
            Err(e) => {
                match errno_status(&e) {
                    None => self.process_error("statvfs", &e),
                    Some(_) => self.mark(DiskStatus::Unwritable, format!("statvfs failed: {e}")),
                }
                return;
            }
        };
        if usage.used_percent > max_used_percent {
            // Oldest first, across channels, down to a point below the limit.
            let mut all: Vec<(i64, (u32, String), u64)> = self
                .state()
                .entries
                .iter()
                .map(|(k, e)| (e.start_ms, k.clone(), e.bytes))
                .collect();
            all.sort();
            let total = usage.total as f64;
            let target = (max_used_percent - 1.0).max(0.0) / 100.0 * total;
            let mut used = usage.used_percent / 100.0 * total;
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
                self.remove(&doomed);
                usage = self::usage(&self.path).unwrap_or(usage);
            }
        }
        {
            let mut st = self.state();
            st.used_percent = usage.used_percent;
            st.available = usage.available;
            st.total = usage.total;
        }
        if no_room && let Err(e) = probe(&self.root) {
            match errno_status(&e) {
                None => self.process_error("disk check", &e),
                Some(st) => self.mark(
                    st,
                    format!(
                        "cannot write to {} even after deleting the oldest material: {e}",
                        self.root.display()
                    ),
                ),
            }
        } else if usage.used_percent > max_used_percent + 0.5 {
            self.mark(
                DiskStatus::Full,
                format!(
                    "{:.1}% used, over the {max_used_percent}% limit, and no material left to delete",
                    usage.used_percent
                ),
            );
        } else {
            self.mark(DiskStatus::Ok, String::new());
        }
    }

    /// Whether `bytes` more fit on the disk without taking it over
    /// `max_used_percent` (measured now).
    pub fn has_room(&self, bytes: u64, max_used_percent: f64) -> io::Result<bool> {
        let u = usage(&self.path)?;
        let used = u.total.saturating_sub(u.available) as f64 + bytes as f64;
        Ok(u.total > 0 && used / u.total as f64 * 100.0 <= max_used_percent && bytes < u.available)
    }
}

const LOCK: &str = ".lock";

/// Takes the disk's lock (see [`Disk`]); the error says who holds it.
fn lock(root: &Path) -> Result<File, (DiskStatus, String)> {
    use std::os::fd::AsRawFd as _;
    let Some(disk) = root.parent().filter(|p| p.is_dir()) else {
        return Err((
            DiskStatus::Missing,
            format!(
                "{} is not a directory (not mounted?)",
                root.parent().unwrap_or(root).display()
            ),
        ));
    };
    let created = !root.exists();
    let f = fs::create_dir_all(root)
        .and_then(|()| if created { sync_dir(disk) } else { Ok(()) })
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
                errno_status(&e).unwrap_or(DiskStatus::Unwritable),
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

struct Usage {
    used_percent: f64,
    available: u64,
    total: u64,
}

/// The file system's usage, as df counts it.
fn usage(path: &Path) -> io::Result<Usage> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; c is a valid
    // NUL-terminated string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frag = s.f_frsize;
    let total = s.f_blocks.saturating_mul(frag);
    let available = s.f_bavail.saturating_mul(frag);
    let free = s.f_bfree.saturating_mul(frag);
    // As df counts: used / (used + available to users).
    let used = total.saturating_sub(free);
    let used_percent = if used + available == 0 {
        100.0
    } else {
        100.0 * used as f64 / (used + available) as f64
    };
    Ok(Usage {
        used_percent,
        available,
        total,
    })
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

/// Reads a disk's index and repairs it after a crash, deleting nothing but
/// `.part` files: entries whose file is gone are dropped, complete segment
/// files the index does not list (or lists with another size) are indexed
/// from the files themselves, files that are not segments are left alone.
/// The index is rewritten when it changed (cutting torn and damaged lines);
/// if it cannot be (a full disk), the inventory is kept in memory and the
/// next start repairs again.
fn load(path: &Path, root: &Path) -> Result<Inventory, (DiskStatus, String)> {
    if !path.is_dir() {
        return Err((
            DiskStatus::Missing,
            format!("{} is not a directory (not mounted?)", path.display()),
        ));
    }
    let broken = |e: io::Error, what: &str| {
        (
            errno_status(&e).unwrap_or(DiskStatus::Unwritable),
            format!("{what}: {e}"),
        )
    };
    let index_path = root.join(INDEX);
    let mut data = Vec::new();
    let index_found = match File::open(&index_path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)
                .map_err(|e| broken(e, &format!("cannot read {}", index_path.display())))?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(broken(e, &format!("cannot read {}", index_path.display()))),
    };
    let replayed = index::replay(&data);
    for p in &replayed.problems {
        tracing::warn!(index = %index_path.display(), line = p.line, "{}", p.what);
    }
    let mut entries = replayed.entries;
    let mut changed = false;
    // Every listed file must be there, with the listed size.
    let mut stale = Vec::new();
    for (key, e) in &entries {
        let file = root.join(format!("ch{}", e.channel)).join(&e.segment);
        match fs::metadata(&file) {
            Ok(m) if m.len() == e.bytes => {}
            Ok(_) => {
                // The file is the truth: indexed again below.
                tracing::warn!(file = %file.display(), "indexed segment has another size than listed; indexing it from the file");
                stale.push(key.clone());
            }
            Err(_) => {
                tracing::warn!(file = %file.display(), "indexed segment is gone; unlisted");
                stale.push(key.clone());
            }
        }
    }
    for k in stale {
        entries.remove(&k);
        changed = true;
    }
    // The files: in progress at a crash (`.part`, removed), complete but
    // unlisted (indexed), or not ours (left alone).
    let mut reindexed = 0;
    for (channel, dir) in channel_dirs(root) {
        let Ok(files) = fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(PART) {
                tracing::warn!(file = %path.display(), "discarding a segment that was being written when the server stopped");
                let _ = fs::remove_file(&path);
                continue;
            }
            if entries.contains_key(&(channel, name.clone())) {
                continue;
            }
            let Ok(seg) = SegmentName::parse(&name) else {
                tracing::warn!(file = %path.display(), "not a segment file; left alone");
                continue;
            };
            match reindex(&path, channel, &seg) {
                Ok(e) => {
                    tracing::warn!(file = %path.display(), duration_ms = e.duration_ms(), bytes = e.bytes, "complete segment missing from the index; indexed from the file");
                    entries.insert((channel, name), e);
                    reindexed += 1;
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot index a segment file; left alone");
                }
            }
        }
    }
    if reindexed > 0 && !index_found {
        tracing::warn!(index = %index_path.display(), segments = reindexed, "the index was missing; rebuilt from the segment files");
    }
    // Rewrite the index when it holds dead lines or damage.
    if changed
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
            sync_dir(root)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(index = %index_path.display(), error = %e, "cannot rewrite the index; the repair is kept in memory and done again at the next start");
        }
    }
    Ok(entries)
}

/// The `chN` directories of a disk's mcrelay directory.
fn channel_dirs(root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(dirs) = fs::read_dir(root) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter_map(|d| {
            let channel = d
                .file_name()
                .to_str()?
                .strip_prefix("ch")?
                .parse::<u32>()
                .ok()?;
            Some((channel, d.path()))
        })
        .collect()
}

/// An index entry for a complete segment file, from the file alone: its
/// name gives the start and recorder, the MPEG-TS its duration, the bytes
/// their size and checksum.
pub fn reindex(path: &Path, channel: u32, name: &SegmentName) -> io::Result<Entry> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut hash = Xxh3::new();
    let mut scan = TsScanner::new();
    let mut bytes = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..n]);
        scan.push(&buf[..n]);
        bytes += n as u64;
    }
    let sum = scan.finish();
    let duration = sum.duration_ms().min(index::MAX_SEGMENT_MS);
    let end_ms = name
        .start_ms
        .saturating_add(duration)
        .min(index::MAX_TIME_MS);
    Ok(Entry {
        channel,
        segment: name.to_string(),
        start_ms: name.start_ms,
        end_ms,
        bytes,
        checksum: index::checksum_string(hash.digest()),
        recorder: name.recorder.clone(),
    })
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
    /// When the first and last frames were received (ms, Unix epoch).
    first_wall: i64,
    last_wall: i64,
    /// Last frame interval seen (the last frame's duration).
    interval: i64,
    dts: DtsClock,
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
                Ok(Job::Track(t)) => {
                    self.disk.queued.fetch_sub(t.data.len(), Ordering::Relaxed);
                    self.track(*t);
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
        let deep = o.dts.too_deep;
        let dts = o.dts.next(f.time, o.interval).rem_euclid(1 << 33) as u64;
        if deep == 0 && o.dts.too_deep > 0 {
            tracing::warn!(channel = f.channel, segment = %f.segment, "the camera's B-frames reorder deeper than this segment assumed: some of its pictures get late decode times; the next segment follows the measured depth");
        }
        // A camera time that repeats or steps back a little has no decode
        // time before it that keeps decode order: it is presented at its
        // decode time, the nearest valid one.
        let pts = if dts > pts && dts - pts < 1 << 32 {
            dts
        } else {
            pts
        };
        o.ts.write_au_dts(&f.nals, f.key, &f.params, pts, dts, &mut o.buf);
        let step = f.time.saturating_sub(o.last_time);
        if (1..=i64::from(crate::media::time::CLOCK_RATE)).contains(&step) {
            o.interval = step;
        }
        o.last_time = f.time;
        o.last_wall = f.wall_ms;
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

    fn track(&mut self, a: TrackJob) {
        use crate::media::TrackKind;
        let Some(o) = self
            .open
            .get_mut(&a.channel)
            .filter(|o| o.name == a.segment)
        else {
            return;
        };
        let pts = a.time.rem_euclid(1 << 33) as u64;
        match a.kind {
            TrackKind::Audio if o.ts.has_audio() => o.ts.write_audio(&a.data, pts, &mut o.buf),
            TrackKind::Audio => o.ts.write_raw_audio(&a.data, pts, &mut o.buf),
            TrackKind::Metadata => o.ts.write_metadata(&a.data, pts, &mut o.buf),
            TrackKind::Video => return,
        }
        if o.buf.len() >= WRITE_CHUNK
            && let Err(e) = flush(o)
        {
            let start = o.name.start_ms;
            self.discard(a.channel);
            self.fail(a.channel, start, &e, "cannot write a segment");
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
            ts: {
                let mut ts = TsWriter::new(f.codec);
                if let Some(adts) = f.audio {
                    ts = ts.with_aac(adts);
                }
                if f.metadata {
                    ts = ts.with_metadata();
                }
                if let Some(rtpmap) = &f.raw_audio {
                    ts = ts.with_raw_audio(rtpmap);
                }
                ts
            },
            buf: Vec::with_capacity(WRITE_CHUNK + 64 * 1024),
            hash: Xxh3::new(),
            bytes: 0,
            first_time: f.time,
            last_time: f.time,
            first_wall: f.wall_ms,
            last_wall: f.wall_ms,
            interval: 3600,
            dts: DtsClock::new(f.reorder),
            last_frame: Instant::now(),
            metrics: f.metrics.clone(),
        })
    }

    fn fail(&mut self, channel: u32, start_ms: i64, e: &io::Error, what: &str) {
        self.failed.insert(channel, start_ms);
        match errno_status(e) {
            Some(st) => self
                .disk
                .mark(st, format!("{what} in {}: {e}", self.disk.root.display())),
            None => self.disk.process_error(what, e),
        }
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
        let path = o.part.with_extension("");
        let written = (|| -> io::Result<()> {
            flush(&mut o)?;
            o.file.sync_all()?;
            fs::rename(&o.part, &path)?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            // Unfinished: only the part file exists, and it goes.
            let _ = fs::remove_file(&o.part);
            self.fail(channel, o.name.start_ms, &e, "cannot finish a segment");
            return;
        }
        let entry = Entry {
            channel,
            segment: o.name.to_string(),
            start_ms: o.name.start_ms,
            end_ms: o.name.start_ms + segment_span_ms(&o),
            bytes: o.bytes,
            checksum: index::checksum_string(o.hash.digest()),
            recorder: o.name.recorder.clone(),
        };
        o.metrics.segments.inc();
        if let Err(e) = self.disk.add(entry.clone()) {
            // The file is complete and stays: listed in memory now, and
            // indexed from the file at the next start.
            tracing::warn!(file = %path.display(), error = %e, "segment complete but not indexed; it is indexed from its file at the next start");
            self.disk
                .state()
                .entries
                .insert((channel, entry.segment.clone()), entry);
            if let Some(st) = errno_status(&e) {
                self.disk.mark(
                    st,
                    format!(
                        "cannot append to the index in {}: {e}",
                        self.disk.root.display()
                    ),
                );
            }
        }
    }
}

/// The time a finished segment covers, ms: its frames' media time, unless
/// that disagrees with the time they took to arrive (a camera clock that
/// jumped or runs wild): then the arrival times. Never negative, never more
/// than an index entry may claim.
fn segment_span_ms(o: &Open) -> i64 {
    span_ms(
        (o.first_time, o.last_time, o.interval),
        (o.first_wall, o.last_wall),
    )
}

/// [`segment_span_ms`] on plain numbers: media (first, last, frame
/// interval) in 90 kHz ticks, wall (first, last) in ms.
fn span_ms(media: (i64, i64, i64), wall: (i64, i64)) -> i64 {
    let (first, last, interval) = media;
    let media = last.saturating_sub(first).saturating_add(interval) / 90;
    let wall = wall.1.saturating_sub(wall.0).saturating_add(interval / 90);
    let span = if (media - wall).abs() > MAX_MEDIA_DRIFT_MS {
        wall
    } else {
        media
    };
    span.clamp(0, index::MAX_SEGMENT_MS)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete segment file of `frames` frames at 25 fps, as the writer
    /// makes them.
    fn segment_bytes(frames: usize) -> Vec<u8> {
        let mut w = TsWriter::new(Codec::H264);
        let mut out = Vec::new();
        let idr = Bytes::from([&[0x65u8][..], &[0xab; 2000][..]].concat());
        let p = Bytes::from([&[0x41u8][..], &[0xcd; 300][..]].concat());
        for i in 0..frames {
            let key = i % 25 == 0;
            let nal = if key { &idr } else { &p };
            w.write_au(
                std::slice::from_ref(nal),
                key,
                &[],
                i as u64 * 3600,
                &mut out,
            );
        }
        out
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }
        fn disk(&self) -> &Path {
            self.dir.path()
        }
        fn root(&self) -> PathBuf {
            self.disk().join(ROOT)
        }
        /// Writes a segment file (not listed) and returns its entry as the
        /// writer would have listed it.
        fn file(&self, channel: u32, start_ms: i64, frames: usize) -> Entry {
            let name = SegmentName::new(start_ms, "rec-1");
            let dir = self.root().join(format!("ch{channel}"));
            fs::create_dir_all(&dir).unwrap();
            let data = segment_bytes(frames);
            fs::write(dir.join(name.to_string()), &data).unwrap();
            Entry {
                channel,
                segment: name.to_string(),
                start_ms,
                end_ms: start_ms + frames as i64 * 40,
                bytes: data.len() as u64,
                checksum: index::checksum_string(xxhash_rust::xxh3::xxh3_64(&data)),
                recorder: "rec-1".into(),
            }
        }
        fn index_path(&self) -> PathBuf {
            self.root().join(INDEX)
        }
        fn write_index(&self, text: &str) {
            fs::create_dir_all(self.root()).unwrap();
            fs::write(self.index_path(), text).unwrap();
        }
        fn open(&self) -> Vec<Entry> {
            let d = Disk::open(self.disk(), 1 << 20);
            assert_eq!(d.status(), DiskStatus::Ok, "{}", d.state().reason);
            let st = d.state();
            st.entries.values().cloned().collect()
        }
        fn files(&self) -> Vec<String> {
            let mut v: Vec<String> = channel_dirs(&self.root())
                .into_iter()
                .flat_map(|(_, d)| fs::read_dir(d).unwrap().flatten())
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    fn line(e: &Entry) -> String {
        Line::Add(e.clone()).to_line()
    }

    #[test]
    fn a_lost_index_is_rebuilt_from_the_segment_files() {
        let f = Fixture::new();
        let a = f.file(1, 1_000_000, 50);
        let b = f.file(1, 1_002_000, 75);
        let c = f.file(2, 1_000_500, 25);
        let got = f.open();
        assert_eq!(got, vec![a, b, c], "re-indexed exactly as written");
        assert_eq!(f.files().len(), 3, "nothing deleted");
        // The rebuilt index is on disk: a second start reads it as it is.
        let replayed = index::replay(&fs::read(f.index_path()).unwrap());
        assert_eq!(replayed.entries.len(), 3);
        assert!(replayed.problems.is_empty());
        assert_eq!(f.open().len(), 3);
    }

    #[test]
    fn a_segment_renamed_before_its_index_line_is_kept_and_indexed() {
        let f = Fixture::new();
        let a = f.file(1, 1_000_000, 50);
        let b = f.file(1, 1_002_000, 50);
        f.write_index(&line(&a)); // crash before b's line
        let part = f.root().join("ch1").join("1004000-rec-1.ts.part");
        fs::write(&part, b"half a segment").unwrap();
        let got = f.open();
        assert_eq!(got, vec![a, b]);
        assert!(
            !part.exists(),
            "the part file of a segment in progress goes"
        );
        assert_eq!(f.files(), vec!["1000000-rec-1.ts", "1002000-rec-1.ts"]);
    }

    #[test]
    fn a_torn_line_loses_neither_the_lines_after_it_nor_their_files() {
        let f = Fixture::new();
        let a = f.file(1, 1_000_000, 25);
        let b = f.file(1, 1_001_000, 25);
        let c = f.file(1, 1_002_000, 25);
        // b's append failed half-way; c's landed on the same line.
        let torn = &line(&b)[..30];
        f.write_index(&format!("{}{torn}{}", line(&a), line(&c)));
        // And junk in the middle of the file.
        let mut text = fs::read_to_string(f.index_path()).unwrap();
        text.insert_str(line(&a).len(), "not json at all\n");
        fs::write(f.index_path(), text).unwrap();
        assert_eq!(f.open(), vec![a, b, c]);
        assert_eq!(f.files().len(), 3);
    }

    #[test]
    fn files_that_are_not_segments_and_odd_sizes_are_never_deleted() {
        let f = Fixture::new();
        let mut a = f.file(1, 1_000_000, 25);
        fs::write(f.root().join("ch1").join("notes.txt"), b"operator's").unwrap();
        // Listed with another size: the file wins.
        let listed = Entry {
            bytes: a.bytes + 5,
            ..a.clone()
        };
        f.write_index(&line(&listed));
        let got = f.open();
        a.end_ms = a.start_ms + 1000;
        assert_eq!(got, vec![a]);
        assert_eq!(f.files(), vec!["1000000-rec-1.ts", "notes.txt"]);
        // Listed but gone: unlisted, nothing else touched.
        fs::remove_file(f.root().join("ch1").join("1000000-rec-1.ts")).unwrap();
        assert!(f.open().is_empty());
        assert_eq!(f.files(), vec!["notes.txt"]);
    }

    #[test]
    fn an_append_after_a_torn_tail_starts_a_line_of_its_own() {
        let f = Fixture::new();
        let a = f.file(1, 1_000_000, 25);
        let b = f.file(1, 1_001_000, 25);
        f.write_index(&line(&a));
        let d = Disk::open(f.disk(), 1 << 20);
        // A fragment appended by a write that failed and was not cut.
        fs::OpenOptions::new()
            .append(true)
            .open(f.index_path())
            .unwrap()
            .write_all(b"{\"add\":{\"chan")
            .unwrap();
        d.add(b.clone()).unwrap();
        drop(d);
        let r = index::replay(&fs::read(f.index_path()).unwrap());
        assert_eq!(r.entries.values().cloned().collect::<Vec<_>>(), vec![a, b]);
    }

    #[test]
    fn retention_deletes_files_even_when_the_index_cannot_take_a_line() {
        let f = Fixture::new();
        let a = f.file(1, 1_000_000, 25);
        let b = f.file(1, 1_001_000, 25);
        f.write_index(&format!("{}{}", line(&a), line(&b)));
        let d = Disk::open(f.disk(), 1 << 20);
        // The index cannot be appended to (as on a disk without one free
        // block): the file is deleted all the same.
        fs::remove_file(f.index_path()).unwrap();
        fs::create_dir(f.index_path()).unwrap();
        let freed = d.remove(&[(1, a.segment.clone())]);
        assert_eq!(freed, a.bytes);
        assert_eq!(f.files(), vec!["1001000-rec-1.ts"]);
        assert_eq!(d.state().entries.len(), 1);
        drop(d);
        // The next start lists what is there.
        fs::remove_dir(f.index_path()).unwrap();
        assert_eq!(f.open(), vec![b]);
    }

    #[test]
    fn a_segment_spans_its_media_time_unless_the_camera_clock_jumped() {
        // 2 s of frames at 25 fps, arriving with jitter: media time.
        assert_eq!(span_ms((0, 49 * 3600, 3600), (10_000, 11_977)), 2000);
        // The media clock ran an hour ahead within the segment: wall time.
        assert_eq!(span_ms((0, 3600 * 90_000, 3600), (10_000, 11_960)), 2000);
        // Backwards: wall time, never a start after the end.
        assert_eq!(span_ms((900_000, 0, 3600), (10_000, 11_960)), 2000);
        assert_eq!(span_ms((i64::MAX, i64::MIN, 3600), (i64::MAX, i64::MIN)), 0);
    }

    #[test]
    fn a_process_error_is_not_a_broken_disk() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(errno_status(&emfile), None);
        assert_eq!(
            errno_status(&io::Error::from_raw_os_error(libc::ENOMEM)),
            None
        );
        assert_eq!(
            errno_status(&io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(DiskStatus::Full)
        );
        assert_eq!(
            errno_status(&io::Error::from_raw_os_error(libc::EIO)),
            Some(DiskStatus::Unwritable)
        );
    }
}

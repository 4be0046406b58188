//! A deliberately slow disk for tests: a FUSE passthrough of a backing
//! directory, served by threads of the test process itself, whose writes,
//! syncs and namespace changes can be made to take as long as a test wants.
//!
//! ```ignore
//! let fs = SlowFs::mount(&backing, &disk);   // `disk` now shows `backing`
//! fs.set_delay(Duration::from_secs(1));      // fsync, write, rename ... take 1 s
//! // ... run the program under test on `disk`, as a child or in-process ...
//! assert!(fs.ops_delayed() > 0);
//! // dropping `fs` unmounts (lazily), also when the test panics
//! ```
//!
//! What is delayed: `write`, `fallocate`, `fsync`, `fsyncdir`, `create`,
//! `mknod`, `mkdir`, `symlink`, `link`, `rename`, `unlink`, `rmdir`, a
//! `setattr` that changes the size (truncate, `set_len`, and the `O_TRUNC`
//! of an `open`, which the kernel sends as one), and `flush` and `release`
//! of a file opened for writing (closing a file that was opened for reading
//! stays fast, as on a real slow disk). The delay applies to each FUSE
//! request: one `write(2)` larger than the kernel's request size (1 MiB
//! here) is several requests and takes several delays, and `close` of a
//! written file waits for its delayed `flush`. Everything else (lookup,
//! `stat`, `read`, `readdir`, `statfs`, `open`) answers at once.
//!
//! The kernel's own locks still apply, as on any slow file system: while a
//! delayed create, `mkdir`, rename or unlink in a directory is pending, the
//! kernel holds that directory's lock, so a `readdir` of it (or a lookup of
//! a name it has not seen) waits too; writes, `fsync` and truncates of one
//! file wait for each other. And a `fork` + `exec` in the test process
//! while a written file on the mount is open closes the child's copy of it
//! on exec, which is a delayed `flush`: spawning a child then takes a delay.
//!
//! A delayed request never holds a serving thread: it waits on a thread of
//! its own and replies from there, so any number of slow requests may be
//! pending while other requests are still served (by 4 threads reading
//! the FUSE device). A pending request waits until `delay` has passed since
//! it arrived, where `delay` is re-read whenever [`SlowFs::set_delay`]
//! changes it: `set_delay(Duration::ZERO)` releases everything pending.
//!
//! Locks: the file system does not implement FUSE's lock requests, so the
//! kernel keeps `flock` and POSIX locks on the mount's own inodes, the way
//! it does for a local file system: they work between processes and open
//! files that go through the mount, but do not conflict with locks taken
//! on the backing directory directly.
//!
//! Files are created by the test process (root) and handed to the calling
//! user; attributes and entries are not cached by the kernel (TTL 0), so a
//! change made in the backing directory behind the mount is seen at once.
//! `st_ino` inside the mount is the mount's own node number, not the
//! backing one; `st_dev` is the mount's own, so the mount point is a mount
//! point to any program that compares it with its parent's.
//!
//! Mounting needs root and `/dev/fuse`; it uses the mount(2) system call
//! (fuser's pure-Rust mount), no `fusermount` and no libfuse. A mount left
//! behind by a test process that died (its serving threads died with it, so
//! any access fails with ENOTCONN) is unmounted by the next
//! [`SlowFs::mount`] of any test.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

/// The source name of our mounts in /proc/self/mountinfo, followed by the
/// serving process's PID: how a later mount recognises a dead one.
const FSNAME_PREFIX: &str = "mcrelay-slowfs-";
/// Threads reading requests from the FUSE device.
const SERVING_THREADS: usize = 4;
/// Attributes and entries are not cached: the backing directory is the truth.
const TTL: Duration = Duration::ZERO;

/// A slow passthrough mount of a backing directory; unmounted on drop.
pub struct SlowFs {
    backing: PathBuf,
    mountpoint: PathBuf,
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
}

impl SlowFs {
    /// Mounts a passthrough of `backing` (a directory) at `mountpoint` (an
    /// empty directory). Neither may lie inside the other. Panics with the
    /// reason when it cannot mount (needs root and /dev/fuse).
    pub fn mount(backing: &Path, mountpoint: &Path) -> SlowFs {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "SlowFs mounts a FUSE file system with mount(2) and needs root: run the tests as root"
        );
        let backing = backing
            .canonicalize()
            .unwrap_or_else(|e| panic!("SlowFs backing {}: {e}", backing.display()));
        let mountpoint = mountpoint
            .canonicalize()
            .unwrap_or_else(|e| panic!("SlowFs mount point {}: {e}", mountpoint.display()));
        assert!(
            !backing.starts_with(&mountpoint) && !mountpoint.starts_with(&backing),
            "SlowFs: backing {} and mount point {} must not contain each other",
            backing.display(),
            mountpoint.display()
        );
        sweep_dead_mounts();

        let shared = Arc::new(Shared::default());
        let fs = PassFs(Arc::new(Inner::new(backing.clone(), shared.clone())));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("{FSNAME_PREFIX}{}", std::process::id())),
            MountOption::DefaultPermissions,
            MountOption::RW,
        ];
        // allow_other: children of any user (and in other mount namespaces,
        // such as `ip netns exec`) may use the disk.
        config.acl = SessionACL::All;
        config.n_threads = Some(SERVING_THREADS);
        config.clone_fd = true;
        let session = fuser::spawn_mount(fs, &mountpoint, &config).unwrap_or_else(|e| {
            panic!(
                "SlowFs: mount FUSE at {} (needs root and /dev/fuse): {e}",
                mountpoint.display()
            )
        });
        let slow = SlowFs {
            backing,
            mountpoint,
            shared,
            session: Some(session),
        };
        // The handshake is done before spawn_mount returns: the mount answers.
        let inner = fs::metadata(&slow.mountpoint)
            .unwrap_or_else(|e| panic!("SlowFs: stat {}: {e}", slow.mountpoint.display()));
        let parent = slow.mountpoint.parent().unwrap_or(&slow.mountpoint);
        let outer = fs::metadata(parent)
            .unwrap_or_else(|e| panic!("SlowFs: stat {}: {e}", parent.display()));
        assert_ne!(
            inner.dev(),
            outer.dev(),
            "SlowFs: {} is not a mount point after mounting",
            slow.mountpoint.display()
        );
        slow
    }

    /// Delays the slow operations (see the module doc) by `d` from now on,
    /// and re-times the ones pending: each then waits `d` from its arrival.
    pub fn set_delay(&self, d: Duration) {
        lock(&self.shared.state).delay = d;
        self.shared.changed.notify_all();
    }

    /// The delay in force.
    pub fn delay(&self) -> Duration {
        lock(&self.shared.state).delay
    }

    /// How many requests have been delayed so far (counted on arrival).
    pub fn ops_delayed(&self) -> u64 {
        self.shared.delayed.load(Ordering::SeqCst)
    }

    /// The delayed requests by kind ("write", "fsync", "fsyncdir", "create",
    /// "rename", "setattr", "flush", "release", ...), counted on arrival.
    pub fn delayed_by_kind(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.shared.by_kind).clone()
    }

    /// The directory the mount shows.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Where the mount is (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        // Release pending delayed requests, so nobody waits on a dead disk.
        lock(&self.shared.state).shutdown = true;
        self.shared.changed.notify_all();
        // Lazy unmount: works while files are open (or a panicking test
        // still holds some); the connection ends when the last user goes.
        let _ = umount_detach(&self.mountpoint);
        // The serving threads end by themselves when the kernel closes the
        // connection; they are not joined, since a child in another mount
        // namespace may keep the mount alive a little longer.
        drop(self.session.take());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn umount_detach(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts our mounts whose serving process is gone (a crashed or killed
/// test run): they only answer ENOTCONN and would trip anything that walks
/// the temporary directory.
fn sweep_dead_mounts() {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), Some(source)) = (right.next(), right.next()) else {
            continue;
        };
        let Some(pid) = source.strip_prefix(FSNAME_PREFIX) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if fstype != "fuse"
            || pid == std::process::id()
            || Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        if let Some(mountpoint) = left.split(' ').nth(4) {
            let _ = umount_detach(&unescape_mountinfo(mountpoint));
        }
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The delay and its waiters, shared by the handle and the file system.
#[derive(Default)]
struct Shared {
    state: Mutex<DelayState>,
    changed: Condvar,
    delayed: AtomicU64,
    by_kind: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Default)]
struct DelayState {
    delay: Duration,
    shutdown: bool,
}

impl Shared {
    /// Waits until the delay in force has passed since `arrived`.
    fn wait_from(&self, arrived: Instant) {
        let mut st = lock(&self.state);
        loop {
            if st.shutdown {
                return;
            }
            let now = Instant::now();
            let until = arrived + st.delay;
            if now >= until {
                return;
            }
            st = self
                .changed
                .wait_timeout(st, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A FUSE node: one backing file or directory, known to the kernel.
struct Node {
    /// Where it is in the backing directory; None once it was unlinked or
    /// replaced by a rename (open files still work through their handles).
    path: Option<PathBuf>,
    /// The backing (st_dev, st_ino), to give one node to one backing file.
    key: (u64, u64),
    /// Lookups the kernel holds (it forgets them with FORGET).
    lookups: u64,
}

struct Nodes {
    by_id: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
}

impl Nodes {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.by_id
            .get(&ino.0)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    /// Counts one kernel lookup of the backing file at `path`; its node id.
    fn remember(&mut self, path: &Path, md: &Metadata) -> u64 {
        let key = (md.dev(), md.ino());
        if let Some(&id) = self.by_key.get(&key)
            && let Some(node) = self.by_id.get_mut(&id)
        {
            node.path = Some(path.to_path_buf());
            node.lookups += 1;
            return id;
        }
        let id = self.next;
        self.next += 1;
        self.by_id.insert(
            id,
            Node {
                path: Some(path.to_path_buf()),
                key,
                lookups: 1,
            },
        );
        self.by_key.insert(key, id);
        id
    }

    fn forget(&mut self, ino: u64, n: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let Some(node) = self.by_id.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let key = node.key;
            self.by_id.remove(&ino);
            if self.by_key.get(&key) == Some(&ino) {
                self.by_key.remove(&key);
            }
        }
    }

    /// The name `path` no longer leads to the node that had it.
    fn detach(&mut self, path: &Path) {
        for (id, node) in self.by_id.iter_mut() {
            if node.path.as_deref() == Some(path) {
                node.path = None;
                if self.by_key.get(&node.key) == Some(id) {
                    self.by_key.remove(&node.key);
                }
            }
        }
    }

    /// `from` (and all below it) is now at `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        for node in self.by_id.values_mut() {
            let Some(p) = node.path.as_deref() else {
                continue;
            };
            if let Ok(rest) = p.strip_prefix(from) {
                node.path = Some(if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                });
            }
        }
    }

    /// `a` and `b` swapped places (RENAME_EXCHANGE).
    fn exchanged(&mut self, a: &Path, b: &Path) {
        let tmp = a.with_file_name(".slowfs-exchange-placeholder");
        self.moved(a, &tmp);
        self.moved(b, a);
        self.moved(&tmp, b);
    }
}

struct OpenFile {
    file: Arc<File>,
    writable: bool,
}

struct OpenDir {
    file: Arc<File>,
    entries: Vec<(u64, FileType, std::ffi::OsString)>,
}

struct Inner {
    root: PathBuf,
    shared: Arc<Shared>,
    nodes: Mutex<Nodes>,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, OpenDir>>,
    next_fh: AtomicU64,
    /// Our own uid: files are handed to the caller when it is someone else.
    euid: u32,
}

impl Inner {
    fn new(root: PathBuf, shared: Arc<Shared>) -> Inner {
        let md =
            fs::metadata(&root).unwrap_or_else(|e| panic!("SlowFs: stat {}: {e}", root.display()));
        let mut by_id = HashMap::new();
        by_id.insert(
            INodeNo::ROOT.0,
            Node {
                path: Some(root.clone()),
                key: (md.dev(), md.ino()),
                lookups: 1,
            },
        );
        let mut by_key = HashMap::new();
        by_key.insert((md.dev(), md.ino()), INodeNo::ROOT.0);
        Inner {
            root,
            shared,
            nodes: Mutex::new(Nodes {
                by_id,
                by_key,
                next: INodeNo::ROOT.0 + 1,
            }),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            // SAFETY: geteuid has no preconditions.
            euid: unsafe { libc::geteuid() },
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.nodes).path(ino)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// Looks up the backing file at `path` for the kernel: counts a lookup.
    fn entry(&self, path: &Path) -> Result<FileAttr, Errno> {
        let mut nodes = lock(&self.nodes);
        let md = fs::symlink_metadata(path)?;
        let id = nodes.remember(path, &md);
        Ok(attr(id, &md))
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.files)
            .get(&fh.0)
            .map(|f| f.file.clone())
            .ok_or(Errno::EBADF)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// A new file or directory gets the caller's mode (we are not subject to
    /// its umask, only to ours) and owner.
    fn adopt(&self, req: &Caller, path: &Path, mode: u32, umask: u32, symlink: bool) {
        if !symlink {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode & !umask & 0o7777));
        }
        if req.uid != self.euid {
            let _ = std::os::unix::fs::lchown(path, Some(req.uid), Some(req.gid));
        }
    }

    /// Runs `op` now, or, with a delay in force, on a thread of its own once
    /// the delay has passed: the serving threads go on meanwhile.
    fn slow(self: &Arc<Self>, kind: &'static str, op: impl FnOnce(&Inner) + Send + 'static) {
        let arrived = Instant::now();
        if lock(&self.shared.state).delay.is_zero() {
            op(self);
            return;
        }
        self.shared.delayed.fetch_add(1, Ordering::SeqCst);
        *lock(&self.shared.by_kind).entry(kind).or_default() += 1;
        let me = self.clone();
        // If no thread can be had, `op` (and the reply in it) is dropped,
        // and fuser answers the request with EIO.
        let _ = std::thread::Builder::new()
            .name("slowfs-delayed".into())
            .spawn(move || {
                me.shared.wait_from(arrived);
                op(&me);
            });
    }

    fn getattr(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        let md = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(f) => f.metadata()?,
            None => fs::symlink_metadata(self.path(ino)?)?,
        };
        Ok(attr(ino.0, &md))
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        let file = fh.and_then(|fh| self.file(fh).ok());
        let path = self.path(ino);
        if let Some(mode) = mode {
            let perm = fs::Permissions::from_mode(mode & 0o7777);
            match &file {
                Some(f) => f.set_permissions(perm)?,
                None => fs::set_permissions(path.clone()?, perm)?,
            }
        }
        if uid.is_some() || gid.is_some() {
            match &file {
                Some(f) => std::os::unix::fs::fchown(f.as_ref(), uid, gid)?,
                None => std::os::unix::fs::lchown(path.clone()?, uid, gid)?,
            }
        }
        if let Some(size) = size {
            match &file {
                Some(f) => f.set_len(size)?,
                None => OpenOptions::new()
                    .write(true)
                    .open(path.clone()?)?
                    .set_len(size)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            let rc = match &file {
                // SAFETY: a valid descriptor and two timespecs.
                Some(f) => unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) },
                None => {
                    let c = CString::new(path.clone()?.into_os_string().into_vec())
                        .map_err(|_| Errno::EINVAL)?;
                    // SAFETY: a valid NUL-terminated path and two timespecs.
                    unsafe {
                        libc::utimensat(
                            libc::AT_FDCWD,
                            c.as_ptr(),
                            times.as_ptr(),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    }
                }
            };
            if rc != 0 {
                return Err(io::Error::last_os_error().into());
            }
        }
        self.getattr(ino, fh)
    }

    fn open(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let acc = flags.acc_mode();
        let file = OpenOptions::new()
            .read(matches!(acc, OpenAccMode::O_RDONLY | OpenAccMode::O_RDWR))
            .write(matches!(acc, OpenAccMode::O_WRONLY | OpenAccMode::O_RDWR))
            .custom_flags(flags.0 & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY))
            .open(&path)?;
        let fh = self.new_fh();
        lock(&self.files).insert(
            fh,
            OpenFile {
                file: Arc::new(file),
                writable: acc != OpenAccMode::O_RDONLY,
            },
        );
        Ok(fh)
    }

    fn create(
        &self,
        req: &Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let path = self.child(parent, name)?;
        let acc = OpenFlags(flags).acc_mode();
        let file = OpenOptions::new()
            .read(matches!(acc, OpenAccMode::O_RDONLY | OpenAccMode::O_RDWR))
            .write(matches!(acc, OpenAccMode::O_WRONLY | OpenAccMode::O_RDWR))
            .custom_flags((flags & !libc::O_NOCTTY) | libc::O_CREAT)
            .mode(mode & !umask & 0o7777)
            .open(&path)?;
        self.adopt(req, &path, mode, umask, false);
        let attr = self.entry(&path)?;
        let fh = self.new_fh();
        lock(&self.files).insert(
            fh,
            OpenFile {
                file: Arc::new(file),
                writable: acc != OpenAccMode::O_RDONLY,
            },
        );
        Ok((attr, fh))
    }

    fn read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn opendir(&self, ino: INodeNo) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let file = File::open(&path)?;
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".into()),
            (INodeNo::ROOT.0, FileType::Directory, "..".into()),
        ];
        {
            let dev = file.metadata()?.dev();
            let nodes = lock(&self.nodes);
            for e in fs::read_dir(&path)? {
                let e = e?;
                let kind = e
                    .file_type()
                    .ok()
                    .and_then(FileType::from_std)
                    .unwrap_or(FileType::RegularFile);
                let backing_ino = e.ino();
                // The mount's own node number when the kernel knows the file,
                // the backing one (any non-zero number does) when not.
                let ino = nodes
                    .by_key
                    .get(&(dev, backing_ino))
                    .copied()
                    .unwrap_or(backing_ino);
                entries.push((ino, kind, e.file_name()));
            }
        }
        let fh = self.new_fh();
        lock(&self.dirs).insert(
            fh,
            OpenDir {
                file: Arc::new(file),
                entries,
            },
        );
        Ok(fh)
    }

    fn rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let mut nodes = lock(&self.nodes);
        if flags.is_empty() {
            fs::rename(&from, &to)?;
        } else {
            let c_from = CString::new(from.clone().into_os_string().into_vec())
                .map_err(|_| Errno::EINVAL)?;
            let c_to =
                CString::new(to.clone().into_os_string().into_vec()).map_err(|_| Errno::EINVAL)?;
            // SAFETY: two valid NUL-terminated paths.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    c_from.as_ptr(),
                    libc::AT_FDCWD,
                    c_to.as_ptr(),
                    flags.bits(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error().into());
            }
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            nodes.exchanged(&from, &to);
        } else {
            nodes.detach(&to);
            nodes.moved(&from, &to);
        }
        Ok(())
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        let mut nodes = lock(&self.nodes);
        if dir {
            fs::remove_dir(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        nodes.detach(&path);
        Ok(())
    }

    fn statfs(&self) -> Result<libc::statvfs, Errno> {
        let c = CString::new(self.root.clone().into_os_string().into_vec())
            .map_err(|_| Errno::EINVAL)?;
        // SAFETY: statvfs writes into the zeroed struct; c is NUL-terminated.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(s)
    }
}

/// The caller of a request, kept past the request for delayed work.
#[derive(Clone, Copy)]
struct Caller {
    uid: u32,
    gid: u32,
}

impl From<&Request> for Caller {
    fn from(r: &Request) -> Caller {
        Caller {
            uid: r.uid(),
            gid: r.gid(),
        }
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs.into())
    }
}

fn attr(ino: u64, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                d.as_secs() as libc::time_t,
                d.subsec_nanos() as libc::c_long,
            ),
            Err(e) => {
                let d = e.duration();
                // Before 1970: whole seconds down, nanoseconds up.
                let mut secs = -(d.as_secs() as libc::time_t);
                let mut nsecs = -(d.subsec_nanos() as libc::c_long);
                if nsecs < 0 {
                    secs -= 1;
                    nsecs += 1_000_000_000;
                }
                (secs, nsecs)
            }
        },
    };
    libc::timespec { tv_sec, tv_nsec }
}

/// The `Filesystem` fuser serves; everything lives in `Inner`, shared with
/// the threads of delayed requests.
struct PassFs(Arc<Inner>);

impl Filesystem for PassFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.child(parent, name).and_then(|p| self.0.entry(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.0.nodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(ino, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let op = move |fs: &Inner| match fs.setattr(ino, fh, mode, uid, gid, size, atime, mtime) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        };
        if size.is_some() {
            self.0.slow("setattr", op);
        } else {
            op(&self.0);
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.0.path(ino).and_then(|p| Ok(fs::read_link(p)?)) {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let caller = Caller::from(req);
        let name = name.to_owned();
        self.0.slow("mknod", move |fs| {
            let made = fs.child(parent, &name).and_then(|path| {
                let c = CString::new(path.clone().into_os_string().into_vec())
                    .map_err(|_| Errno::EINVAL)?;
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::mknod(c.as_ptr(), mode & !umask, rdev.into()) } != 0 {
                    return Err(io::Error::last_os_error().into());
                }
                fs.adopt(&caller, &path, mode, umask, false);
                fs.entry(&path)
            });
            match made {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let caller = Caller::from(req);
        let name = name.to_owned();
        self.0.slow("mkdir", move |fs| {
            let made = fs.child(parent, &name).and_then(|path| {
                fs::DirBuilder::new()
                    .mode(mode & !umask & 0o7777)
                    .create(&path)?;
                fs.adopt(&caller, &path, mode, umask, false);
                fs.entry(&path)
            });
            match made {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.0
            .slow("unlink", move |fs| match fs.remove(parent, &name, false) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.0
            .slow("rmdir", move |fs| match fs.remove(parent, &name, true) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let caller = Caller::from(req);
        let name = link_name.to_owned();
        let target = target.to_owned();
        self.0.slow("symlink", move |fs| {
            let made = fs.child(parent, &name).and_then(|path| {
                std::os::unix::fs::symlink(&target, &path)?;
                fs.adopt(&caller, &path, 0, 0, true);
                fs.entry(&path)
            });
            match made {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name.to_owned();
        let newname = newname.to_owned();
        self.0.slow("rename", move |fs| {
            match fs.rename(parent, &name, newparent, &newname, flags) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_owned();
        self.0.slow("link", move |fs| {
            let made = fs.path(ino).and_then(|from| {
                let to = fs.child(newparent, &newname)?;
                fs::hard_link(&from, &to)?;
                fs.entry(&to)
            });
            match made {
                Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.0.open(ino, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.0.slow("write", move |fs| {
            // With O_APPEND the backing file appends wherever `offset` says.
            match fs.file(fh).and_then(|f| Ok(f.write_all_at(&data, offset)?)) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes went to the backing file as they came: nothing to flush.
        let writable = lock(&self.0.files).get(&fh.0).is_some_and(|f| f.writable);
        if writable {
            self.0.slow("flush", move |_| reply.ok());
        } else {
            reply.ok();
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let writable = lock(&self.0.files).get(&fh.0).is_some_and(|f| f.writable);
        let op = move |fs: &Inner| {
            lock(&fs.files).remove(&fh.0);
            reply.ok();
        };
        if writable {
            self.0.slow("release", op);
        } else {
            op(&self.0);
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0.slow("fsync", move |fs| {
            let synced = fs.file(fh).and_then(|f| {
                if datasync {
                    f.sync_data()?;
                } else {
                    f.sync_all()?;
                }
                Ok(())
            });
            match synced {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = lock(&self.0.dirs);
        let Some(dir) = dirs.get(&fh.0) else {
            drop(dirs);
            reply.error(Errno::EBADF);
            return;
        };
        for (i, (ino, kind, name)) in dir.entries.iter().enumerate().skip(offset as usize) {
            // The offset given with an entry is where the next read goes on.
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        drop(dirs);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0.slow("fsyncdir", move |fs| {
            let dir = lock(&fs.dirs).get(&fh.0).map(|d| d.file.clone());
            let synced = match dir {
                None => Err(Errno::EBADF),
                Some(d) if datasync => d.sync_data().map_err(Errno::from),
                Some(d) => d.sync_all().map_err(Errno::from),
            };
            match synced {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.0.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = Caller::from(req);
        let name = name.to_owned();
        self.0.slow("create", move |fs| {
            match fs.create(&caller, parent, &name, mode, umask, flags) {
                Ok((attr, fh)) => reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.0.slow("fallocate", move |fs| {
            let done = fs.file(fh).and_then(|f| {
                // SAFETY: a valid descriptor.
                let rc =
                    unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, length as i64) };
                if rc != 0 {
                    return Err(io::Error::last_os_error().into());
                }
                Ok(())
            });
            match done {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }
}

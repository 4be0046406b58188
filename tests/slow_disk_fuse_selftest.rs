//! The slow disk of the tests (`common::slowfs`), tested by itself: a FUSE
//! passthrough that child processes and the test process use like a disk,
//! and that, when told, makes writes, syncs and renames take a second
//! while it still answers stat and read at once. Needs root.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::slowfs::SlowFs;

/// A temporary directory with `backing/` and `disk/`; the SlowFs (declared
/// after it) is dropped, and so unmounted, before the directory is removed.
fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = common::tempdir();
    let backing = tmp.path().join("backing");
    let disk = tmp.path().join("disk");
    fs::create_dir(&backing).expect("create backing dir");
    fs::create_dir(&disk).expect("create mount point");
    (tmp, backing, disk)
}

fn sh(script: &str, dir: &Path) -> std::process::Output {
    Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

fn flock_nb(f: &File) -> bool {
    // SAFETY: flock on a descriptor the caller owns.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path without NUL");
    // SAFETY: statvfs writes into the zeroed struct; c is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut s) },
        0,
        "statvfs {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    s
}

#[test]
fn a_child_process_and_the_test_process_use_the_mount_like_a_disk() {
    let (tmp, backing, disk) = layout();
    let fs = SlowFs::mount(&backing, &disk);

    // A mount point by the recorder's test: another st_dev than its parent.
    let md = fs::metadata(&disk).expect("stat mount");
    let parent = fs::metadata(tmp.path()).expect("stat parent");
    assert_ne!(md.dev(), parent.dev(), "the mount has its own st_dev");
    assert!(md.is_dir());

    // A child process: mkdir -p, create, append, rename, dd with fsync,
    // ls, cat, rm, a directory fsync (sync DIR), flock.
    let out = sh(
        r#"set -e
        cd "$1"
        mkdir -p ch/0001
        printf 'hello' > ch/0001/seg.part
        printf ' world' >> ch/0001/seg.part
        mv ch/0001/seg.part ch/0001/seg.ts
        dd if=/dev/zero of=ch/big bs=64k count=40 conv=fsync status=none
        test "$(wc -c < ch/big)" -eq 2621440
        ls ch/0001
        cat ch/0001/seg.ts; echo
        rm ch/big
        sync ch/0001
        flock -n ch/lock -c 'echo locked'
        "#,
        &disk,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child on the mount failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "seg.ts\nhello world\nlocked\n");
    assert_eq!(
        fs::read_to_string(backing.join("ch/0001/seg.ts")).expect("segment in backing"),
        "hello world"
    );
    assert!(!backing.join("ch/0001/seg.part").exists());
    assert!(!backing.join("ch/big").exists(), "rm went through");

    // The test process, the way the recorder writes a segment.
    let dir = disk.join("ch/0002");
    fs::create_dir_all(&dir).expect("create_dir_all on the mount");
    let part = dir.join("seg.part");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .expect("open O_APPEND|O_CREAT on the mount");
    f.write_all(b"0123456789").expect("append");
    f.write_all(b"abcdef").expect("append again");
    f.sync_data().expect("fdatasync");
    f.sync_all().expect("fsync");
    drop(f);
    let f = OpenOptions::new()
        .write(true)
        .open(&part)
        .expect("open for truncate");
    f.set_len(12).expect("set_len");
    drop(f);
    assert_eq!(fs::metadata(&part).expect("stat part").len(), 12);
    let seg = dir.join("seg.ts");
    fs::rename(&part, &seg).expect("rename on the mount");
    File::open(&dir)
        .expect("open dir")
        .sync_all()
        .expect("fsync a directory");
    assert_eq!(
        fs::read(&seg).expect("read through the mount"),
        b"0123456789ab"
    );
    assert_eq!(
        fs::read(backing.join("ch/0002/seg.ts")).expect("read backing"),
        b"0123456789ab"
    );
    let mut f = File::open(&seg).expect("open for read");
    let mut buf = [0u8; 4];
    f.read_exact_at(&mut buf, 8).expect("pread");
    assert_eq!(&buf, b"89ab");
    let mut rest = String::new();
    f.read_to_string(&mut rest).expect("read");
    assert_eq!(rest, "0123456789ab");
    let seg_md = f.metadata().expect("fstat");
    assert_eq!(seg_md.len(), 12);
    assert_eq!(seg_md.dev(), md.dev(), "files share the mount's st_dev");
    assert_ne!(seg_md.ino(), md.ino());
    drop(f);

    let mut names: Vec<String> = fs::read_dir(disk.join("ch"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["0001", "0002", "lock"]);

    // A file changed behind the mount is seen at once (no attribute cache).
    fs::write(backing.join("ch/0002/seg.ts"), b"rewritten behind").expect("write backing");
    assert_eq!(
        fs::read(&seg).expect("read after a change behind the mount"),
        b"rewritten behind"
    );

    fs::remove_file(&seg).expect("unlink");
    assert!(!backing.join("ch/0002/seg.ts").exists());
    fs::remove_dir(&dir).expect("rmdir");
    assert!(!backing.join("ch/0002").exists());

    // statvfs is the backing file system's.
    let (a, b) = (statvfs(&disk), statvfs(&backing));
    assert_eq!((a.f_blocks, a.f_frsize), (b.f_blocks, b.f_frsize));
    assert!(a.f_bavail > 0);

    // flock: exclusive between open files of this process and children.
    let lock_path = disk.join("ch/lock");
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .expect("open lock");
    assert!(flock_nb(&held), "the first flock succeeds");
    let other = File::open(&lock_path).expect("open lock again");
    assert!(!flock_nb(&other), "a second open file cannot take the lock");
    let child = sh(r#"flock -n "$1/ch/lock" true"#, &disk);
    assert!(!child.status.success(), "a child cannot take a held lock");
    drop(held);
    // The kernel tells the file system of the close (FUSE RELEASE, which
    // drops the lock) after close() returns: the lock is free soon after.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut free = flock_nb(&other);
    while !free && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        free = flock_nb(&other);
    }
    assert!(free, "the lock is free once its file is closed");
    drop(other);
    let child = sh(r#"flock -n "$1/ch/lock" true"#, &disk);
    assert!(child.status.success(), "a child takes the free lock");

    assert_eq!(fs.ops_delayed(), 0, "nothing is delayed without a delay");
}

type Kept = std::io::Result<Option<File>>;

/// Runs `op` on a thread and measures it. A file it returns is kept open
/// until the test has lifted the delay (closing a written file is slow).
fn timed(
    what: &'static str,
    op: impl FnOnce() -> Kept + Send + 'static,
) -> thread::JoinHandle<(&'static str, Duration, Kept)> {
    thread::spawn(move || {
        let t = Instant::now();
        let r = op();
        (what, t.elapsed(), r)
    })
}

#[test]
fn with_a_one_second_delay_writes_and_syncs_take_a_second_while_stat_and_read_answer() {
    let (_tmp, backing, disk) = layout();
    let fs = SlowFs::mount(&backing, &disk);
    // Each slow namespace change in a directory of its own: the kernel
    // holds a directory's lock while a create, rename, ... in it is pending,
    // as it does on any file system, and that would serialize them.
    let made = sh(
        r#"set -e; cd "$1"; mkdir files syncd ren del mk cr
        printf old > files/a; printf old > files/w; printf longer > files/t; printf data > files/b
        printf x > ren/c; printf y > del/d"#,
        &disk,
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let rw = |name: &str| {
        Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(disk.join(name))
                .unwrap_or_else(|e| panic!("open {name}: {e}")),
        )
    };
    let (a, w) = (rw("files/a"), rw("files/w"));
    let b = File::open(disk.join("files/b")).expect("open b");

    let second = Duration::from_secs(1);
    fs.set_delay(second);
    assert_eq!(fs.delay(), second);
    let before = fs.ops_delayed();
    let started = Instant::now();

    let fsync_done = Arc::new(AtomicBool::new(false));
    let mut slow = Vec::new();
    {
        let (a, done) = (a.clone(), fsync_done.clone());
        slow.push(timed("fsync", move || {
            let r = a.sync_all();
            done.store(true, Ordering::SeqCst);
            r.map(|()| None)
        }));
    }
    {
        let w = w.clone();
        slow.push(timed("write", move || {
            w.write_all_at(b"new", 0).map(|()| None)
        }));
    }
    {
        let p = disk.join("syncd");
        slow.push(timed("fsync dir", move || {
            File::open(p)?.sync_all().map(|()| None)
        }));
    }
    {
        let (from, to) = (disk.join("ren/c"), disk.join("ren/c2"));
        slow.push(timed("rename", move || fs::rename(from, to).map(|()| None)));
    }
    {
        let p = disk.join("del/d");
        slow.push(timed("unlink", move || fs::remove_file(p).map(|()| None)));
    }
    {
        let p = disk.join("mk/newdir");
        slow.push(timed("mkdir", move || fs::create_dir(p).map(|()| None)));
    }
    {
        let p = disk.join("cr/created");
        slow.push(timed("create", move || File::create_new(p).map(Some)));
    }
    {
        let p = disk.join("files/t");
        slow.push(timed("truncate", move || {
            let f = OpenOptions::new().write(true).open(p)?;
            f.set_len(4)?;
            Ok(Some(f))
        }));
    }

    // While all of these wait on the slow disk, other requests answer.
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let md = fs::metadata(disk.join("files/b")).expect("stat during the delays");
    let mut buf = [0u8; 4];
    b.read_exact_at(&mut buf, 0)
        .expect("pread during the delays");
    let names = fs::read_dir(disk.join("files"))
        .expect("readdir during the delays")
        .count();
    let quick = t.elapsed();
    assert!(
        !fsync_done.load(Ordering::SeqCst),
        "the fsync had returned before stat/read were answered ({:?} after the start)",
        started.elapsed()
    );
    assert!(
        quick < Duration::from_millis(500),
        "stat, pread and readdir took {quick:?} behind slow requests"
    );
    assert_eq!(md.len(), 4);
    assert_eq!(&buf, b"data");
    assert_eq!(names, 4);

    let mut kept = Vec::new();
    for h in slow {
        let (what, took, r) = h.join().expect("slow op thread");
        kept.push(r.unwrap_or_else(|e| panic!("{what} on the slow disk: {e}")));
        assert!(took >= second, "{what} took {took:?}, less than the delay");
    }
    let all = started.elapsed();
    assert!(
        all < Duration::from_millis(2500),
        "8 one-second requests took {all:?} together: they were not served concurrently"
    );
    let by_kind = fs.delayed_by_kind();
    for kind in [
        "fsync", "write", "fsyncdir", "rename", "unlink", "mkdir", "create", "setattr",
    ] {
        assert!(
            by_kind.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} was delayed: {by_kind:?}"
        );
    }
    assert!(
        fs.ops_delayed() >= before + 8,
        "ops_delayed went from {before} to {}",
        fs.ops_delayed()
    );

    // Without the delay: quick again, and the slow operations all landed.
    fs.set_delay(Duration::ZERO);
    drop(kept);
    let t = Instant::now();
    a.sync_all().expect("fsync without delay");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fs::read(backing.join("files/w")).expect("w"), b"new");
    assert_eq!(fs::read(backing.join("files/t")).expect("t"), b"long");
    assert!(backing.join("ren/c2").exists() && !backing.join("ren/c").exists());
    assert!(!backing.join("del/d").exists());
    assert!(backing.join("mk/newdir").is_dir());
    assert!(backing.join("cr/created").is_file());
}

#[test]
fn lifting_the_delay_releases_a_pending_fsync() {
    let (_tmp, backing, disk) = layout();
    let fs = SlowFs::mount(&backing, &disk);
    let f = File::create(disk.join("f")).expect("create");
    fs.set_delay(Duration::from_secs(30));
    let h = timed("fsync", move || f.sync_all().map(|()| Some(f)));
    thread::sleep(Duration::from_millis(300));
    assert!(!h.is_finished(), "the fsync waits for the delay");
    fs.set_delay(Duration::ZERO);
    let (_, took, r) = h.join().expect("fsync thread");
    r.expect("fsync");
    assert!(
        took < Duration::from_secs(5),
        "the fsync took {took:?} after the delay was lifted"
    );
    // Only the fsync: (a flush may be delayed too, when another test's
    // fork closes its copy of `f` on exec).
    assert_eq!(
        fs.delayed_by_kind().get("fsync"),
        Some(&1),
        "{:?}",
        fs.delayed_by_kind()
    );
    assert!(fs.ops_delayed() >= 1);
}

/// Lazily unmounts a path on drop (whether or not it is still mounted).
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes())
            .expect("path without NUL");
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn mounted_at(p: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let p = p.to_str().expect("UTF-8 path");
    info.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// Run by `a_mount_left_by_a_killed_test_process_is_unmounted_by_the_next_mount`
/// in a child process of its own; does nothing when run otherwise.
#[test]
#[ignore = "a helper: run by another test in a child process"]
fn helper_holds_a_mount_until_killed() {
    let Some(dir) = std::env::var_os("SLOWFS_HOLD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let fs = SlowFs::mount(&dir.join("backing"), &dir.join("disk"));
    fs::write(dir.join("ready"), b"").expect("write ready");
    // Killed long before this ends.
    thread::sleep(Duration::from_secs(60));
    drop(fs);
}

#[test]
fn a_mount_left_by_a_killed_test_process_is_unmounted_by_the_next_mount() {
    let (tmp, _backing, disk) = layout();
    let disk = disk.canonicalize().expect("canonical mount point");
    let _cleanup = DetachOnDrop(disk.clone());
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "helper_holds_a_mount_until_killed", "--ignored"])
        .env("SLOWFS_HOLD_DIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = common::Proc::spawn(cmd, "a test process holding a SlowFs mount");
    let ready = common::wait_for(Duration::from_secs(20), || {
        tmp.path().join("ready").exists().then_some(())
    });
    assert!(ready.is_some(), "the child never mounted");
    assert!(mounted_at(&disk));
    holder.kill();

    // What a crashed run leaves: a mount nobody serves.
    let err = fs::metadata(&disk).expect_err("a dead mount does not answer");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    let (_tmp2, backing2, disk2) = layout();
    let _fs = SlowFs::mount(&backing2, &disk2);
    assert!(!mounted_at(&disk), "the dead mount is still there");
    assert!(
        fs::metadata(&disk)
            .expect("stat the old mount point")
            .is_dir(),
        "the old mount point is a plain directory again"
    );
}

#[test]
fn a_program_run_in_a_test_network_namespace_records_on_the_mount() {
    // mcrelay runs under `ip netns exec`, which gives it a mount namespace
    // of its own: the mount made before is there too, and slow there too.
    let (_tmp, backing, disk) = layout();
    let fs = SlowFs::mount(&backing, &disk);
    let ns = common::Netns::new("slowfs");
    let out = ns
        .command("sh")
        .args([
            "-c",
            r#"set -e
            test "$(stat -c %d "$1")" != "$(stat -c %d "$1/..")"
            mkdir "$1/rec"; printf seg > "$1/rec/1.ts"; sync "$1/rec/1.ts"; cat "$1/rec/1.ts""#,
            "sh",
        ])
        .arg(&disk)
        .stdin(Stdio::null())
        .output()
        .expect("run sh in the namespace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"seg");
    assert_eq!(
        fs::read(backing.join("rec/1.ts")).expect("read backing"),
        b"seg"
    );

    fs.set_delay(Duration::from_millis(500));
    let t = Instant::now();
    let out = ns
        .command("sh")
        .args(["-c", r#"sync "$1/rec/1.ts""#, "sh"])
        .arg(&disk)
        .output()
        .expect("run sync in the namespace");
    assert!(out.status.success());
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "sync(1) in the namespace took {:?}",
        t.elapsed()
    );
    assert!(fs.delayed_by_kind().contains_key("fsync"));
    fs.set_delay(Duration::ZERO);
}

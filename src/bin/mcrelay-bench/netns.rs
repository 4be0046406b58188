//! Hosts for the benchmark: network namespaces the tool makes and deletes.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// What a signal must clean up: namespaces made and children started.
static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// On SIGINT or SIGTERM: kill the children this tool started, delete its
/// namespaces, exit. Call before starting any thread.
pub fn clean_up_on_signals() {
    // SAFETY: signal masks and sigwait on a set this function owns.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("signal {sig}: cleaning up");
            for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
            for ns in NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
            std::process::exit(130);
        });
    }
}

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Netns {
    /// A namespace with its lo up (multicast routes are the caller's).
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        anyhow::ensure!(
            unsafe { libc::geteuid() } == 0,
            "the benchmark makes network namespaces: run it as root"
        );
        let name = format!("mcr-bench-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        NAMESPACES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that entered the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f_ns = std::fs::File::open(&path).expect("namespace file");
            let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process, killed by its PID on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        Proc::spawn_as_set(cmd)
    }

    /// Like [`Proc::spawn`], with the standard streams the caller set
    /// (a log file, a pipe to read).
    pub fn spawn_as_set(mut cmd: Command) -> anyhow::Result<Proc> {
        let child = cmd.spawn()?;
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(Proc(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL to this PID (`ip netns exec` and `taskset` exec the
    /// program, so it is the program's own), then reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let id = self.0.id();
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != id);
    }
}

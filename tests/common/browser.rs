//! A real browser for the tests: Debian's `chromium`, headless, run inside
//! a test's network namespace only (never on the host's network: nothing
//! it sends may leave the machine; the namespaces have no route out).

use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::Netns;

/// Chromium starts in about a second here; a page that has not been
/// dumped after this is a failure, not a wait.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The page at `url` as the browser has it (`--dump-dom`) after 4 s of
/// virtual time: its scripts have run, fetched and refreshed (timers run
/// in virtual time, so this takes well under 4 s; virtual time stops
/// while a fetch is pending).
pub fn dump_dom(ns: &Netns, url: &str) -> String {
    dump_dom_after(ns, url, Some(4000))
}

/// [`dump_dom`] after `budget_ms` of virtual time; without one, as soon
/// as the page has loaded (before its fetches are answered: the page as
/// its HTML has it). A budget of 0 never dumps.
pub fn dump_dom_after(ns: &Netns, url: &str, budget_ms: Option<u32>) -> String {
    let dir = super::tempdir();
    let profile = dir.path().join("profile");
    let (out, err) = (dir.path().join("dom.html"), dir.path().join("chromium.err"));
    let mut cmd = ns.command("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        // Nothing in the background (updates, sync, metrics): the page only.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(budget_ms.map(|b| format!("--virtual-time-budget={b}")))
    .args(["--dump-dom", url])
    // Its caches and settings in the test's directory, not root's home.
    .env("HOME", dir.path())
    .env("XDG_CONFIG_HOME", dir.path())
    .env("XDG_CACHE_HOME", dir.path())
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(&out).unwrap())
    .stderr(std::fs::File::create(&err).unwrap())
    // Its own process group: the browser's helpers (zygote, renderer)
    // are killed with it, and nothing else is.
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("ip netns exec chromium: {e}"));
    let pid = child.id();
    let deadline = Instant::now() + TIMEOUT;
    let mut timed_out = false;
    // Wait for the browser to exit without reaping it: while it is a
    // zombie its process group cannot be anybody else's.
    while !exited(pid) {
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child's own process group (pgid == its pid).
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    let status = child.wait().expect("reap chromium");
    let dom = std::fs::read_to_string(&out).unwrap_or_default();
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        !timed_out,
        "chromium did not dump {url} within {TIMEOUT:?}:\n{log}"
    );
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium on {url}: {status} (Debian package chromium; scripts/test.sh \
         installs it); dumped {dom:?}\n{log}"
    );
    dom
}

/// Whether child `pid` has exited, leaving it to be reaped.
fn exited(pid: u32) -> bool {
    // SAFETY: waitid fills the zeroed siginfo it is given; WNOWAIT leaves
    // the child a zombie.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        rc == 0 && info.si_pid() != 0
    }
}

/// The markup of the element that opens with `<TAG id="ID"` (up to its
/// first `</TAG>`: for elements that hold none of their kind).
pub fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let open = format!("<{tag} id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no {open} in the page:\n{dom}"));
    let close = format!("</{tag}>");
    let end = dom[start..]
        .find(&close)
        .map_or(dom.len(), |e| start + e + close.len());
    &dom[start..end]
}

//! File descriptors: raised to the hard limit at start, and shared out so
//! that client connections can never starve the cameras and the disks (a
//! flood of idle connections once made the disk check fail with "Too many
//! open files" and `/health` report the server broken).

/// Descriptors kept for the process itself: stdio, logs, the runtime's
/// own (epoll, eventfd, signals), listeners, threads' files.
const BASE: u64 = 64;
/// Per channel: the camera's connection, the multicast RTP and RTCP
/// sockets of its video, audio and metadata, the segment being written, a
/// reconnect overlapping a close.
const PER_CHANNEL: u64 = 10;
/// Per material disk: its lock, its index, a probe or a directory sync, a
/// copied segment being received.
const PER_DISK: u64 = 8;
/// Connections the control API takes when descriptors allow.
pub const CONTROL_CONNECTIONS: usize = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (servers need more
/// than the 1024 a login shell starts with); returns the soft limit now in
/// force.
pub fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    if l.rlim_cur < l.rlim_max {
        let want = libc::rlimit {
            rlim_cur: l.rlim_max,
            rlim_max: l.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            l.rlim_cur = l.rlim_max;
        }
    }
    l.rlim_cur
}

/// Connection caps that fit the descriptors left after the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub control: usize,
    pub rtsp: usize,
}

/// Shares `nofile` descriptors out: the reserve for `channels`, `disks`
/// and the failover's group `listeners` (one socket each) first, then the control API and the RTSP server (which wants
/// `rtsp_wanted`), each shrunk in proportion when they do not fit. The
/// string explains a shrink, for a warning.
pub fn budget(
    nofile: u64,
    channels: usize,
    disks: usize,
    listeners: usize,
    rtsp_wanted: usize,
) -> (Budget, Option<String>) {
    let reserve = BASE + PER_CHANNEL * channels as u64 + PER_DISK * disks as u64 + listeners as u64;
    let free = nofile.saturating_sub(reserve) as usize;
    let want = CONTROL_CONNECTIONS + rtsp_wanted;
    if want <= free {
        return (
            Budget {
                control: CONTROL_CONNECTIONS,
                rtsp: rtsp_wanted,
            },
            None,
        );
    }
    let control = (free * CONTROL_CONNECTIONS / want.max(1)).max(4);
    let rtsp = free.saturating_sub(control).max(4);
    (
        Budget { control, rtsp },
        Some(format!(
            "only {nofile} file descriptors ({reserve} kept for {channels} channels, {disks} disks and {listeners} group listeners): connections capped at {control} (control API) and {rtsp} (RTSP) instead of {CONTROL_CONNECTIONS} and {rtsp_wanted}; raise the limit (ulimit -n, LimitNOFILE=)"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_never_take_the_reserve() {
        let (b, warn) = budget(1 << 20, 100, 4, 300, 400);
        assert_eq!(
            b,
            Budget {
                control: 256,
                rtsp: 400
            }
        );
        assert!(warn.is_none());
        // 1024 descriptors, 80 channels, 4 disks and 60 listeners: 956
        // reserved.
        let (b, warn) = budget(1024, 80, 4, 60, 400);
        assert!(b.control + b.rtsp <= 1024 - 956 + 8, "{b:?}");
        assert!(warn.unwrap().contains("60 group listeners"));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let n = raise_nofile();
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        assert_eq!((n, l.rlim_cur), (l.rlim_max, l.rlim_max));
    }
}

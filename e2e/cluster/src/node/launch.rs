//! Starting a container's process: between fork and exec the child moves into
//! its container cgroup, joins the pod's network namespace, makes its own
//! mount namespace (private propagation) with the pod's volumes, a private
//! /tmp and the pod's /etc/hosts bind-mounted, its own UTS namespace with the
//! pod's hostname, then drops to the pod's uid/gid/groups and starts a new
//! session. Everything the child uses is prepared before the fork: it only
//! makes system calls (it runs in a copy of a multi-threaded process).
//! `exec` probes join a running container's namespaces the same way. I/O.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};

/// How a path is mounted in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// Bind-mount `source` (directory or file).
    Bind(PathBuf),
    /// A fresh tmpfs (mode 1777).
    Tmpfs,
}

/// One mount of the container's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What.
    pub kind: MountKind,
    /// Where the container sees it.
    pub target: PathBuf,
    /// Remounted read-only.
    pub read_only: bool,
}

/// Everything needed to start one process in a pod.
pub struct Spec {
    /// The host program.
    pub program: PathBuf,
    /// argv (argv[0] as the container's command named it).
    pub argv: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// Where the process starts (in its mount namespace).
    pub workdir: PathBuf,
    /// uid, gid and supplementary groups on this machine.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub groups: Vec<u32>,
    /// The cgroup directory the process goes in.
    pub cgroup: PathBuf,
    /// Namespaces: a new container or joining a running one.
    pub ns: Namespaces,
    /// stdout and stderr (the log file), or None for /dev/null.
    pub output: Option<File>,
}

/// Which namespaces the process gets.
pub enum Namespaces {
    /// A new container: join the pod's netns, new mount + UTS namespaces.
    New {
        /// `/run/netns/tk-…`.
        netns: PathBuf,
        /// The pod's hostname.
        hostname: String,
        /// Mounts in order (parents before children).
        mounts: Vec<Mount>,
    },
    /// Join the namespaces of a running container process (exec probes).
    Join {
        /// Its pid.
        pid: i32,
    },
}

struct PreparedMount {
    /// A bind source is opened (O_PATH, in the new mount namespace) before any
    /// mount, moved to this fd number and mounted from `/proc/self/fd/N`: the
    /// tmpfs on /tmp would hide a source under /tmp (a cluster in /tmp/…).
    open_source: Option<(CString, libc::c_int)>,
    /// Directories to make first (a target inside an earlier tmpfs).
    mkdirs: Vec<CString>,
    source: Option<CString>,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    read_only: bool,
}

enum Prepared {
    New {
        netns: File,
        hostname: Vec<u8>,
        mounts: Vec<PreparedMount>,
    },
    Join {
        net: File,
        uts: File,
        mnt: File,
    },
}

/// The directories from inside the deepest earlier tmpfs mount down to `target`.
fn dirs_under_tmpfs(earlier: &[Mount], target: &Path) -> Vec<PathBuf> {
    let Some(t) = earlier
        .iter()
        .filter(|m| {
            m.kind == MountKind::Tmpfs && target.starts_with(&m.target) && target != m.target
        })
        .map(|m| m.target.clone())
        .max_by_key(|t| t.components().count())
    else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = target
        .ancestors()
        .take_while(|a| *a != t)
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} has a NUL", p.display()))
}

/// The fd numbers the child places its own fds at before exec: the program
/// and then one per bind source. They sit at the top of the fd range, where
/// the (multi-threaded) parent has nothing open, and so never land on the
/// pipe through which the standard library reports a failed exec to the
/// parent: a clobbered pipe turns an exec error into an abort of the child.
struct FixedFds {
    program: libc::c_int,
}

fn fixed_fds(mounts: usize) -> FixedFds {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(65_536)
    } else {
        1024
    };
    let top = libc::c_int::try_from(soft).unwrap_or(1024);
    let needed = libc::c_int::try_from(mounts).unwrap_or(0) + 2;
    FixedFds {
        program: (top - needed).max(3),
    }
}

/// Start the process; the caller waits for it.
pub fn spawn(spec: Spec) -> Result<tokio::process::Child> {
    let mount_count = match &spec.ns {
        Namespaces::New { mounts, .. } => mounts.len(),
        Namespaces::Join { .. } => 0,
    };
    let fixed = fixed_fds(mount_count);
    // The program is opened in the child before any namespace change and
    // executed through its fd: a tmpfs on /tmp would hide a program under
    // /tmp (a repository cloned there).
    let program = cstr(&spec.program)?;
    let program_fd = fixed.program;
    let cgroup_procs = std::fs::OpenOptions::new()
        .write(true)
        .open(spec.cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", spec.cgroup.display()))?;
    let prepared = match &spec.ns {
        Namespaces::New {
            netns,
            hostname,
            mounts,
        } => {
            let netns =
                File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
            // Bind sources sit just above the program's fd, at the top of the
            // fd range (see `fixed_fds`).
            let first_free_fd = fixed.program + 1;
            let mut pm = Vec::new();
            for (i, m) in mounts.iter().enumerate() {
                let mkdirs = dirs_under_tmpfs(&mounts[..i], &m.target)
                    .iter()
                    .map(|d| cstr(d))
                    .collect::<Result<Vec<_>>>()?;
                pm.push(match &m.kind {
                    MountKind::Bind(src) => {
                        if !src.exists() {
                            anyhow::bail!("volume source {} does not exist", src.display());
                        }
                        let fixed = first_free_fd + i as libc::c_int;
                        let via = PathBuf::from(format!("/proc/self/fd/{fixed}"));
                        PreparedMount {
                            open_source: Some((cstr(src)?, fixed)),
                            mkdirs,
                            source: Some(cstr(&via)?),
                            target: cstr(&m.target)?,
                            fstype: None,
                            flags: libc::MS_BIND | libc::MS_REC,
                            data: None,
                            read_only: m.read_only,
                        }
                    }
                    MountKind::Tmpfs => PreparedMount {
                        open_source: None,
                        mkdirs,
                        source: Some(CString::from(c"tmpfs")),
                        target: cstr(&m.target)?,
                        fstype: Some(CString::from(c"tmpfs")),
                        flags: libc::MS_NOSUID | libc::MS_NODEV,
                        data: Some(CString::from(c"mode=1777")),
                        read_only: m.read_only,
                    },
                });
            }
            Prepared::New {
                netns,
                hostname: hostname.as_bytes().to_vec(),
                mounts: pm,
            }
        }
        Namespaces::Join { pid } => {
            let open = |n: &str| {
                let p = format!("/proc/{pid}/ns/{n}");
                File::open(&p).with_context(|| format!("opening {p}"))
            };
            Prepared::Join {
                net: open("net")?,
                uts: open("uts")?,
                mnt: open("mnt")?,
            }
        }
    };
    let workdir = cstr(&spec.workdir)?;
    let groups: Vec<libc::gid_t> = spec.groups.clone();
    let (uid, gid) = (spec.uid, spec.gid);
    // An exec probe that times out is killed with its future; a container is not.
    let kill_on_drop = matches!(spec.ns, Namespaces::Join { .. });

    let mut cmd = tokio::process::Command::new(format!("/proc/self/fd/{program_fd}"));
    cmd.arg0(spec.argv.first().map(String::as_str).unwrap_or(""))
        .args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(kill_on_drop);
    match spec.output {
        Some(f) => {
            let err = f.try_clone().context("duplicating the log file")?;
            cmd.stdout(Stdio::from(f)).stderr(Stdio::from(err));
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let procs_fd: OwnedFd = cgroup_procs.into();
    // SAFETY: the closure runs in the forked child before exec; it only makes
    // system calls on values prepared above (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            open_program(&program, program_fd)?;
            child_setup(&procs_fd, &prepared, &workdir, &groups, uid, gid)
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", spec.program.display()))
}

/// Write a fixed message to the child's stderr (its log file) and return errno.
fn fail(msg: &'static [u8]) -> io::Error {
    let e = io::Error::last_os_error();
    // SAFETY: write(2) on fd 2 with a static buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
    e
}

fn ptr(c: &Option<CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// In the child: open the program (O_PATH) at fd `at`, for exec through `/proc/self/fd/<at>`.
fn open_program(program: &CString, at: libc::c_int) -> io::Result<()> {
    // SAFETY: open(2)/dup3(2)/close(2) on a NUL-terminated path and fds of the child.
    unsafe {
        let fd = libc::open(program.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(fail(b"tandem node: cannot open the program\n"));
        }
        if fd != at {
            if libc::dup3(fd, at, libc::O_CLOEXEC) < 0 {
                return Err(fail(b"tandem node: cannot place the program fd\n"));
            }
            libc::close(fd);
        }
    }
    Ok(())
}

fn child_setup(
    procs: &OwnedFd,
    prepared: &Prepared,
    workdir: &CString,
    groups: &[libc::gid_t],
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    // SAFETY: plain system calls on valid fds and NUL-terminated strings.
    unsafe {
        if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
            return Err(fail(b"tandem node: cannot enter the container cgroup\n"));
        }
        match prepared {
            Prepared::New {
                netns,
                hostname,
                mounts,
            } => {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(fail(
                        b"tandem node: cannot join the pod network namespace\n",
                    ));
                }
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                    return Err(fail(b"tandem node: cannot create mount/UTS namespaces\n"));
                }
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(fail(b"tandem node: cannot make / private\n"));
                }
                for m in mounts {
                    if let Some((src, fixed)) = &m.open_source {
                        let fd = libc::open(src.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(fail(b"tandem node: cannot open a volume source\n"));
                        }
                        if fd != *fixed {
                            if libc::dup3(fd, *fixed, libc::O_CLOEXEC) < 0 {
                                return Err(fail(
                                    b"tandem node: cannot place a volume source fd\n",
                                ));
                            }
                            libc::close(fd);
                        }
                    }
                }
                for m in mounts {
                    for d in &m.mkdirs {
                        libc::mkdir(d.as_ptr(), 0o755);
                    }
                    if libc::mount(
                        ptr(&m.source),
                        m.target.as_ptr(),
                        ptr(&m.fstype),
                        m.flags,
                        ptr(&m.data).cast(),
                    ) != 0
                    {
                        return Err(fail(b"tandem node: a volume mount failed\n"));
                    }
                    if m.read_only
                        && libc::mount(
                            std::ptr::null(),
                            m.target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(fail(b"tandem node: a read-only remount failed\n"));
                    }
                }
                if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                    return Err(fail(b"tandem node: cannot set the hostname\n"));
                }
            }
            Prepared::Join { net, uts, mnt } => {
                if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0
                    || libc::setns(uts.as_raw_fd(), libc::CLONE_NEWUTS) != 0
                    || libc::setns(mnt.as_raw_fd(), libc::CLONE_NEWNS) != 0
                {
                    return Err(fail(b"tandem node: cannot join the container namespaces\n"));
                }
            }
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(fail(b"tandem node: setgroups failed\n"));
        }
        if libc::setgid(gid) != 0 {
            return Err(fail(b"tandem node: setgid failed\n"));
        }
        if libc::setuid(uid) != 0 {
            return Err(fail(b"tandem node: setuid failed\n"));
        }
        if libc::chdir(workdir.as_ptr()) != 0 {
            return Err(fail(
                b"tandem node: cannot change to the working directory\n",
            ));
        }
        if libc::setsid() < 0 {
            return Err(fail(b"tandem node: setsid failed\n"));
        }
    }
    Ok(())
}

//! The control group of a jailed VMM: a memory limit and a CPU quota.
//!
//! cgroup v2 is used for each controller it offers; a controller still
//! bound to a v1 hierarchy (hosts in hybrid mode) is used there with the
//! v1 files, so the limits hold either way. A group is named
//! `<id>.<pid>` after the instance and the keeper process (see `super`),
//! so that VMMs of one id under two daemons never share one. On v2 the
//! groups are `strato/<name>` under the hierarchy's root (v2 allows no processes in a
//! group that hands controllers to its children, so they cannot go under
//! the daemon's own group, which holds the daemon); on v1 they are
//! `strato/<name>` under this process's own group, so whatever limits the
//! daemon runs under still bound its VMMs.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Error;

/// CPU quota period (cpu.max's second field), 100 ms.
const PERIOD_US: u64 = 100_000;

/// Limits to apply.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// memory.max in bytes.
    pub memory_bytes: Option<u64>,
    /// CPUs worth of time per period (cpu.max = cpus * period).
    pub cpus: Option<u32>,
}

/// One mounted hierarchy.
#[derive(Debug)]
struct Hierarchy {
    mount: PathBuf,
    v2: bool,
    /// Controllers bound to it (v1: from the mount options).
    controllers: Vec<String>,
}

/// The groups made for one VMM, one per hierarchy used.
#[derive(Debug, Default)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

fn cg_err(path: &Path, source: io::Error) -> Error {
    Error::Path {
        what: "cgroup",
        path: path.to_path_buf(),
        source,
    }
}

/// Mounted cgroup hierarchies, from /proc/self/mountinfo.
fn hierarchies() -> Result<Vec<Hierarchy>, Error> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| cg_err(Path::new("/proc/self/mountinfo"), e))?;
    let mut found = Vec::new();
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - TYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, superopts) = (r.next().unwrap_or(""), r.nth(1).unwrap_or(""));
        let mount = PathBuf::from(mount.replace("\\040", " "));
        match fstype {
            "cgroup2" => {
                let listed =
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
                found.push(Hierarchy {
                    controllers: listed.split_whitespace().map(str::to_string).collect(),
                    mount,
                    v2: true,
                });
            }
            "cgroup" => found.push(Hierarchy {
                controllers: superopts.split(',').map(str::to_string).collect(),
                mount,
                v2: false,
            }),
            _ => {}
        }
    }
    Ok(found)
}

/// This process's group in a v1 hierarchy with `controller`, from
/// /proc/self/cgroup (`ID:CONTROLLERS:PATH`).
fn own_v1_path(controller: &str) -> Result<PathBuf, Error> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| cg_err(Path::new("/proc/self/cgroup"), e))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            ctl.split(',')
                .any(|c| c == controller)
                .then(|| PathBuf::from(path.trim_start_matches('/')))
        })
        .ok_or_else(|| Error::Invalid(format!("this process is in no {controller} cgroup")))
}

/// Where the group `name` goes for `controller`: (hierarchy, group
/// directory).
fn place<'a>(
    all: &'a [Hierarchy],
    controller: &str,
    name: &str,
) -> Result<(&'a Hierarchy, PathBuf), Error> {
    let has = |h: &&Hierarchy| h.controllers.iter().any(|c| c == controller);
    if let Some(h) = all.iter().filter(|h| h.v2).find(has) {
        return Ok((h, h.mount.join("strato").join(name)));
    }
    if let Some(h) = all.iter().filter(|h| !h.v2).find(has) {
        let own = own_v1_path(controller)?;
        return Ok((h, h.mount.join(own).join("strato").join(name)));
    }
    Err(Error::Invalid(format!(
        "no cgroup hierarchy offers the {controller} controller (is cgroup2 mounted at /sys/fs/cgroup?)"
    )))
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|e| cg_err(path, e))
}

/// Turns `controller` on for the children of every group from the v2 root
/// down to `dir`'s parent.
fn delegate(h: &Hierarchy, dir: &Path, controller: &str) -> Result<(), Error> {
    let mut at = h.mount.clone();
    let Ok(rel) = dir.strip_prefix(&h.mount) else {
        return Ok(());
    };
    let steps: Vec<_> = rel.components().collect();
    for (i, step) in steps.iter().enumerate() {
        let control = at.join("cgroup.subtree_control");
        // Written even when it already lists the controller: another VMM
        // starting at the same time may have just turned it on, and the
        // file says so before the kernel has given the existing groups
        // (ours among them) their files, cpu.max say. A write waits for
        // that (the kernel serializes them), and turning on what is on
        // is a no-op. Only where this process may not write it (a
        // delegated hierarchy) does "already on" have to do.
        if let Err(e) = write(&control, &format!("+{controller}")) {
            let on = std::fs::read_to_string(&control).unwrap_or_default();
            if !on.split_whitespace().any(|c| c == controller) {
                return Err(e);
            }
        }
        at.push(step);
        if i + 1 < steps.len() {
            make_dir(&at)?;
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cg_err(dir, e)),
    }
}

/// The group name of instance `id` kept by process `keeper`.
fn name(id: &str, keeper: u32) -> String {
    format!("{id}.{keeper}")
}

/// Makes the group of instance `id` kept by this process, with `limits`
/// (nothing without any).
pub fn create(id: &str, limits: Limits) -> Result<Cgroup, Error> {
    let id = &name(id, std::process::id());
    let mut group = Cgroup::default();
    if limits.memory_bytes.is_none() && limits.cpus.is_none() {
        return Ok(group);
    }
    let all = hierarchies()?;
    let made = (|| {
        if let Some(bytes) = limits.memory_bytes {
            let (h, dir) = place(&all, "memory", id)?;
            group.prepare(h, &dir, "memory")?;
            let file = if h.v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            write(&dir.join(file), &bytes.to_string())?;
        }
        if let Some(cpus) = limits.cpus {
            let (h, dir) = place(&all, "cpu", id)?;
            group.prepare(h, &dir, "cpu")?;
            let quota = u64::from(cpus) * PERIOD_US;
            if h.v2 {
                write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        Ok(())
    })();
    if let Err(e) = made {
        group.remove();
        return Err(e);
    }
    Ok(group)
}

impl Cgroup {
    /// Makes `dir` (once), refusing one that still holds processes.
    fn prepare(&mut self, h: &Hierarchy, dir: &Path, controller: &str) -> Result<(), Error> {
        if h.v2 {
            delegate(h, dir, controller)?;
        } else if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cg_err(parent, e))?;
        }
        if self.dirs.iter().any(|d| d == dir) {
            return Ok(());
        }
        make_dir(dir)?;
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return Err(Error::Invalid(format!(
                "cgroup {} is in use by another process (is a VMM with this id running?)",
                dir.display()
            )));
        }
        self.dirs.push(dir.to_path_buf());
        Ok(())
    }

    /// Moves the calling process into every group.
    pub fn join(&self) -> Result<(), Error> {
        for dir in &self.dirs {
            // "0" is the writing process itself, whatever pid namespace
            // it is in.
            write(&dir.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    /// Removes the groups; their processes must have ended (a group whose
    /// last process is being torn down is busy for a moment).
    pub fn remove(&self) {
        for dir in &self.dirs {
            remove_dir(dir);
        }
    }
}

fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                log::warn!("cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Removes the groups of instance `id` kept by process `keeper` if left
/// behind (the keeper was killed, its VMM with it).
pub fn remove(id: &str, keeper: i32) {
    let Ok(keeper) = u32::try_from(keeper) else {
        return;
    };
    let id = &name(id, keeper);
    let Ok(all) = hierarchies() else {
        return;
    };
    for controller in ["memory", "cpu"] {
        if let Ok((_, dir)) = place(&all, controller, id) {
            if dir.exists() {
                remove_dir(&dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_found() {
        // Every Linux with cgroups mounted lists at least one.
        let all = hierarchies().unwrap();
        if std::path::Path::new("/sys/fs/cgroup").exists() {
            assert!(!all.is_empty());
        }
    }
}

//! lossyfs: an in-memory FUSE file system that behaves like a disk losing power.
//!
//! It is test machinery for paxosdb, not part of the database: `kill -9` keeps the page
//! cache, so it never tests what was written but not synced. On lossyfs, every write
//! reaches the file system at once (no kernel write-back cache, direct I/O) and is held
//! twice: as the file's current contents and as what an fsync last made durable. On
//! `crash`, the whole file system reverts to its durable state; see [`state`] for the
//! exact model (file data durable on fsync/fdatasync, directory entries durable when the
//! directory is fsynced).
//!
//! Control: the file [`CTL_NAME`] in the root (not listed by `readdir`) takes one command
//! per line; each runs under the file system's lock, so it is atomic with respect to every
//! other operation. Reading it gives counters (crashes, fsyncs, used bytes, free space).
//! - `crash`: power loss. Every open handle dies: later reads, writes and syncs on it
//!   fail with EIO. Kill the processes using the file system first, as a power loss would.
//! - `sync`: make everything durable (as if every file and directory were synced).
//! - `space N`: from now on, files may grow by at most N more bytes in all; beyond that,
//!   writes and growing truncates fail with ENOSPC (overwrites still work). `statfs`
//!   reports the remaining space as free.
//! - `full`: `space 0`.
//! - `space unlimited` (or `unlimited`): lift the limit.
//!
//! Locks (`flock`, `fcntl`) are left to the kernel, which handles them locally when the
//! file system does not claim them. `fallocate` is refused with EOPNOTSUPP.
//!
//! In-process use: [`mount`] returns a [`Mount`] whose [`Control`] runs the same commands.

pub mod state;

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use state::{State, Stats, BLOCK, CTL_INO, ROOT};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Name of the control file in the file system's root.
pub const CTL_NAME: &str = ".lossyfs-ctl";

/// Nothing is cached by the kernel: after a crash, every lookup and attribute must come
/// from the reverted state.
const TTL: Duration = Duration::ZERO;
/// Handles of the control file carry this bit; they survive crashes.
const CTL_FH: u64 = 1 << 63;

/// A handle on a file system's state, to run control commands from the process that
/// mounted it.
#[derive(Clone, Debug)]
pub struct Control {
    state: Arc<Mutex<State>>,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one command (see the crate docs).
    pub fn command(&self, cmd: &str) -> Result<(), String> {
        self.lock().command(cmd)
    }

    /// Power loss: everything not synced is forgotten and every open handle dies.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// Makes everything durable.
    pub fn sync(&self) {
        self.lock().sync_all();
    }

    /// Files may grow by at most `bytes` more in all (None: no limit).
    pub fn set_space(&self, bytes: Option<u64>) {
        self.lock().set_space(bytes);
    }

    /// The counters also shown by the control file.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// The control file's text.
    pub fn status(&self) -> String {
        self.lock().status()
    }

    /// Bytes held by files.
    pub fn used(&self) -> u64 {
        self.lock().used()
    }
}

/// The FUSE side: every operation takes the state's lock for its whole duration.
struct LossyFs {
    control: Control,
}

fn attr_of(ino: u64, i: &state::Inode) -> FileAttr {
    let size = i.size();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: i.atime,
        mtime: i.mtime,
        ctime: i.ctime,
        crtime: i.ctime,
        kind: i.kind(),
        perm: i.perm,
        nlink: i.nlink(),
        uid: i.uid,
        gid: i.gid,
        rdev: 0,
        blksize: BLOCK as u32,
        flags: 0,
    }
}

fn ctl_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(CTL_INO),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o600,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK as u32,
        flags: 0,
    }
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl LossyFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.control.lock()
    }

    fn attr(&self, st: &State, ino: u64) -> Result<FileAttr, Errno> {
        if ino == CTL_INO {
            return Ok(ctl_attr());
        }
        Ok(attr_of(ino, st.inode(ino)?))
    }
}

/// Handles of regular files: direct I/O, so that the kernel keeps no page cache that could
/// outlive a crash and every write reaches the file system when it is made.
fn open_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == CTL_NAME {
            return reply.entry(&TTL, &ctl_attr(), Generation(0));
        }
        let st = self.state();
        match st
            .lookup(parent.0, name)
            .and_then(|ino| self.attr(&st, ino))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut st = self.state();
        let res = match fh {
            Some(fh) if fh.0 & CTL_FH == 0 => st.check_handle(Some(fh.0)),
            _ => Ok(()),
        }
        .and_then(|_| self.attr(&st, ino.0));
        match res {
            Ok(a) => reply.attr(&TTL, &a),
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
        if ino.0 == CTL_INO {
            // `echo crash > ctl` truncates first: nothing to do.
            return reply.attr(&TTL, &ctl_attr());
        }
        let mut st = self.state();
        let ino = ino.0;
        let res = (|| {
            st.check_handle(fh.map(|f| f.0))?;
            if let Some(size) = size {
                st.truncate(ino, size)?;
            }
            if let Some(mode) = mode {
                st.set_perm(ino, perm(mode, 0))?;
            }
            if uid.is_some() || gid.is_some() {
                st.set_owner(ino, uid, gid)?;
            }
            if atime.is_some() || mtime.is_some() {
                st.set_times(ino, atime.map(time_of), mtime.map(time_of))?;
            }
            self.attr(&st, ino)
        })();
        match res {
            Ok(a) => reply.attr(&TTL, &a),
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
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut st = self.state();
        let res = st
            .create(
                parent.0,
                name,
                perm(mode, umask),
                req.uid(),
                req.gid(),
                libc::O_EXCL,
                false,
            )
            .and_then(|(ino, _)| self.attr(&st, ino));
        match res {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
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
        let mut st = self.state();
        let res = st
            .mkdir(parent.0, name, perm(mode, umask), req.uid(), req.gid())
            .and_then(|ino| self.attr(&st, ino));
        match res {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .state()
            .rename(parent.0, name, newparent.0, newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == CTL_INO {
            return reply.opened(FileHandle(CTL_FH), open_flags());
        }
        match self.state().open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags()),
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
        let mut st = self.state();
        if fh.0 & CTL_FH != 0 {
            let text = st.status().into_bytes();
            let start = (offset as usize).min(text.len());
            let end = start.saturating_add(size as usize).min(text.len());
            return reply.data(&text[start..end]);
        }
        match st.read(fh.0, offset, size) {
            Ok(data) => reply.data(data),
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
        let mut st = self.state();
        if fh.0 & CTL_FH != 0 {
            let text = String::from_utf8_lossy(data);
            for line in text.lines() {
                if let Err(e) = st.command(line) {
                    eprintln!("lossyfs: {e}");
                    return reply.error(Errno::EINVAL);
                }
            }
            return reply.written(data.len() as u32);
        }
        match st.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if fh.0 & CTL_FH != 0 {
            return reply.ok();
        }
        match self.state().check_handle(Some(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
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
        if fh.0 & CTL_FH == 0 {
            self.state().release(fh.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 & CTL_FH != 0 {
            return reply.ok();
        }
        match self.state().fsync(ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().inode(ino.0).map(|i| i.kind()) {
            Ok(FileType::Directory) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.state().readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, FileType::Directory, ".".into()),
            (ROOT, FileType::Directory, "..".into()),
        ];
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (blocks, free) = self.state().statfs();
        reply.statfs(
            blocks,
            free,
            free,
            1 << 20,
            1 << 20,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        if ino.0 == CTL_INO {
            return reply.ok();
        }
        match self.state().inode(ino.0) {
            Ok(_) => reply.ok(),
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
        let mut st = self.state();
        let res = st
            .create(
                parent.0,
                name,
                perm(mode, umask),
                req.uid(),
                req.gid(),
                flags,
                true,
            )
            .and_then(|(ino, fh)| Ok((self.attr(&st, ino)?, fh.expect("opened"))));
        match res {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), FileHandle(fh), open_flags()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }
}

/// A mounted lossyfs; dropping it unmounts.
pub struct Mount {
    path: PathBuf,
    session: Option<fuser::BackgroundSession>,
    control: Control,
}

/// Mounts a new, empty lossyfs on the existing directory `path`. Needs root (mount(2)) or
/// the `fusermount3` helper, and `/dev/fuse`.
pub fn mount(path: &Path) -> io::Result<Mount> {
    let control = Control {
        state: Arc::new(Mutex::new(State::new())),
    };
    let fs = LossyFs {
        control: control.clone(),
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lossyfs".to_string()),
        MountOption::Subtype("lossyfs".to_string()),
    ];
    let session = fuser::spawn_mount(fs, path, &config)?;
    Ok(Mount {
        path: path.to_path_buf(),
        session: Some(session),
        control,
    })
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Power loss (see [`Control::crash`]).
    pub fn crash(&self) {
        self.control.crash();
    }

    /// Unmounts; fails (EBUSY) while a process still uses the file system, and then
    /// detaches it lazily instead.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                lazy_unmount(&self.path);
                Err(e)
            }
        }
    }
}

fn lazy_unmount(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; umount2 does not keep it.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("lossyfs: unmounting {}: {e}", self.path.display());
        }
    }
}

/// Why lossyfs cannot be mounted here, if it cannot: it needs `/dev/fuse` and root.
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse (FUSE is not available)".to_string());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mounting lossyfs needs mount(2))".to_string());
    }
    None
}

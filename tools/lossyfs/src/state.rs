//! The file system's state, without FUSE: what each file and directory holds now, and
//! what of it would survive a power loss.
//!
//! Durability model (strict, POSIX-like):
//! - a file's contents and size become durable when the file is `fsync`ed or
//!   `fdatasync`ed (both are treated alike);
//! - a directory's entries (create, mkdir, rename in or out, unlink, rmdir) become durable
//!   when that directory is `fsync`ed (FUSE `fsyncdir`). A new file whose data was synced
//!   but whose directory was not is gone after a crash; a rename is durable in the new
//!   directory only once that directory is synced, and out of the old one only once that
//!   one is; a directory that was created and recorded in its parent but never synced
//!   itself comes back empty;
//! - `crash` reverts every directory to its durable entries and every file to its durable
//!   contents (a file that is reachable but was never synced comes back empty), drops what
//!   is no longer reachable, and invalidates every open handle: later operations on them
//!   fail with EIO.
//!
//! Inode numbers are never reused, so a kernel that still remembers a vanished inode can
//! never confuse it with a new one.

use fuser::{Errno, FileType};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

pub const ROOT: u64 = 1;
/// The control file's inode (see `crate::CTL_NAME`); not part of any directory.
pub const CTL_INO: u64 = 2;
const FIRST_INO: u64 = 3;
/// Reported size of the file system when no space limit is set.
const UNLIMITED_BYTES: u64 = 1 << 40;
pub const BLOCK: u64 = 4096;

#[derive(Debug)]
pub enum Body {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        /// Lowest offset that may differ from `durable` (None: `data == durable`).
        /// Invariant: `data[..d] == durable[..d]` and both are at least `d` long, so a
        /// sync copies only the tail written since the last one.
        dirty_from: Option<usize>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Debug)]
pub struct Inode {
    pub body: Body,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Entries naming it now, entries naming it in durable directory states, and open
    /// handles: it is freed when all three are zero.
    links: u32,
    durable_links: u32,
    opens: u32,
}

impl Inode {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            body,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 0,
            durable_links: 0,
            opens: 0,
        }
    }

    pub fn kind(&self) -> FileType {
        match self.body {
            Body::File { .. } => FileType::RegularFile,
            Body::Dir { .. } => FileType::Directory,
        }
    }

    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File { data, .. } => data.len() as u64,
            Body::Dir { entries, .. } => entries.len() as u64,
        }
    }

    pub fn nlink(&self) -> u32 {
        match self.body {
            Body::File { .. } => self.links,
            Body::Dir { .. } => 2,
        }
    }
}

/// An open file.
#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    append: bool,
}

/// Counters shown by the control file's status.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub crashes: u64,
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
    pub writes: u64,
    pub enospc: u64,
    pub stale_handle_errors: u64,
}

#[derive(Debug)]
pub struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Bytes held by files (current contents).
    used: u64,
    /// With a limit, growing files beyond this many bytes in all fails with ENOSPC.
    capacity: Option<u64>,
    pub stats: Stats,
}

type Res<T> = Result<T, Errno>;

fn grow_dirty(dirty: &mut Option<usize>, from: usize) {
    *dirty = Some(dirty.map_or(from, |d| d.min(from)));
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> State {
        let mut root = Inode::new(
            Body::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            0o755,
            0,
            0,
        );
        root.links = 1;
        root.durable_links = 1;
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, root);
        State {
            inodes,
            next_ino: FIRST_INO,
            handles: HashMap::new(),
            next_fh: 1,
            used: 0,
            capacity: None,
            stats: Stats::default(),
        }
    }

    pub fn inode(&self, ino: u64) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn entries(&self, dir: u64) -> Res<&BTreeMap<OsString, u64>> {
        match &self.inode(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Res<&mut BTreeMap<OsString, u64>> {
        match &mut self.inode_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    /// The inode of an open handle; EIO for a handle from before the last crash.
    fn handle(&mut self, fh: u64) -> Res<Handle> {
        match self.handles.get(&fh) {
            Some(h) => Ok(*h),
            None => {
                self.stats.stale_handle_errors += 1;
                Err(Errno::EIO)
            }
        }
    }

    /// Checks that an operation naming both an inode and a handle may go on.
    pub fn check_handle(&mut self, fh: Option<u64>) -> Res<()> {
        match fh {
            Some(fh) => self.handle(fh).map(|_| ()),
            None => Ok(()),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.entries(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Points `parent/name` at `ino` (which must exist), releasing what it pointed at.
    fn link(&mut self, parent: u64, name: &OsStr, ino: u64) -> Res<()> {
        let old = self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        self.inode_mut(ino)?.links += 1;
        if let Some(old) = old {
            self.inode_mut(old)?.links -= 1;
            self.maybe_free(old);
        }
        self.touch(parent);
        Ok(())
    }

    fn unlink_entry(&mut self, parent: u64, name: &OsStr) -> Res<u64> {
        let ino = self
            .entries_mut(parent)?
            .remove(name)
            .ok_or(Errno::ENOENT)?;
        self.inode_mut(ino)?.links -= 1;
        self.maybe_free(ino);
        self.touch(parent);
        Ok(ino)
    }

    fn touch(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            let now = SystemTime::now();
            i.mtime = now;
            i.ctime = now;
        }
    }

    /// Frees `ino` (and what only it kept alive) once nothing refers to it.
    fn maybe_free(&mut self, ino: u64) {
        let mut work = vec![ino];
        while let Some(ino) = work.pop() {
            let free = match self.inodes.get(&ino) {
                Some(i) => ino != ROOT && i.links == 0 && i.durable_links == 0 && i.opens == 0,
                None => false,
            };
            if !free {
                continue;
            }
            let inode = self.inodes.remove(&ino).expect("checked");
            match inode.body {
                Body::File { data, .. } => self.used -= data.len() as u64,
                Body::Dir { entries, durable } => {
                    for child in entries.values() {
                        if let Some(c) = self.inodes.get_mut(child) {
                            c.links -= 1;
                        }
                        work.push(*child);
                    }
                    for child in durable.values() {
                        if let Some(c) = self.inodes.get_mut(child) {
                            c.durable_links -= 1;
                        }
                        work.push(*child);
                    }
                }
            }
        }
    }

    fn new_inode(&mut self, body: Body, perm: u16, uid: u32, gid: u32) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(body, perm, uid, gid));
        ino
    }

    fn open_handle(&mut self, ino: u64, append: bool) -> Res<u64> {
        self.inode_mut(ino)?.opens += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, append });
        Ok(fh)
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr, perm: u16, uid: u32, gid: u32) -> Res<u64> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.new_inode(
            Body::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            perm,
            uid,
            gid,
        );
        self.link(parent, name, ino)?;
        Ok(ino)
    }

    /// Creates (or, without `excl`, opens) `parent/name`; returns its inode and, when
    /// `open`, a handle.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
        flags: i32,
        open: bool,
    ) -> Res<(u64, Option<u64>)> {
        let ino = match self.entries(parent)?.get(name).copied() {
            Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
            Some(ino) => {
                if matches!(self.inode(ino)?.body, Body::Dir { .. }) {
                    return Err(Errno::EISDIR);
                }
                if flags & libc::O_TRUNC != 0 {
                    self.truncate(ino, 0)?;
                }
                ino
            }
            None => {
                let ino = self.new_inode(
                    Body::File {
                        data: Vec::new(),
                        durable: Vec::new(),
                        dirty_from: None,
                    },
                    perm,
                    uid,
                    gid,
                );
                self.link(parent, name, ino)?;
                ino
            }
        };
        let fh = if open {
            Some(self.open_handle(ino, flags & libc::O_APPEND != 0)?)
        } else {
            None
        };
        Ok((ino, fh))
    }

    pub fn open(&mut self, ino: u64, flags: i32) -> Res<u64> {
        if matches!(self.inode(ino)?.body, Body::Dir { .. }) {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_TRUNC != 0 {
            self.truncate(ino, 0)?;
        }
        self.open_handle(ino, flags & libc::O_APPEND != 0)
    }

    /// Closes a handle; a handle from before a crash is already gone.
    pub fn release(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            if let Some(i) = self.inodes.get_mut(&h.ino) {
                i.opens -= 1;
            }
            self.maybe_free(h.ino);
        }
    }

    pub fn read(&mut self, fh: u64, offset: u64, size: u32) -> Res<&[u8]> {
        let h = self.handle(fh)?;
        match &self.inode(h.ino)?.body {
            Body::File { data, .. } => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(&data[start..end])
            }
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    /// Bytes a file may grow by now.
    fn check_space(&mut self, growth: u64) -> Res<()> {
        if let Some(cap) = self.capacity {
            if self.used + growth > cap {
                self.stats.enospc += 1;
                return Err(Errno::ENOSPC);
            }
        }
        Ok(())
    }

    pub fn write(&mut self, fh: u64, offset: u64, buf: &[u8]) -> Res<u32> {
        let h = self.handle(fh)?;
        let len = match &self.inode(h.ino)?.body {
            Body::File { data, .. } => data.len(),
            Body::Dir { .. } => return Err(Errno::EISDIR),
        };
        let offset = if h.append { len } else { offset as usize };
        let end = offset.checked_add(buf.len()).ok_or(Errno::EFBIG)?;
        let growth = end.saturating_sub(len) as u64;
        self.check_space(growth)?;
        let inode = self.inode_mut(h.ino)?;
        if let Body::File {
            data, dirty_from, ..
        } = &mut inode.body
        {
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset..end].copy_from_slice(buf);
            grow_dirty(dirty_from, offset.min(len));
        }
        let now = SystemTime::now();
        inode.mtime = now;
        inode.ctime = now;
        self.used += growth;
        self.stats.writes += 1;
        Ok(buf.len() as u32)
    }

    pub fn truncate(&mut self, ino: u64, size: u64) -> Res<()> {
        let len = match &self.inode(ino)?.body {
            Body::File { data, .. } => data.len() as u64,
            Body::Dir { .. } => return Err(Errno::EISDIR),
        };
        if size > len {
            self.check_space(size - len)?;
        }
        let inode = self.inode_mut(ino)?;
        if let Body::File {
            data, dirty_from, ..
        } = &mut inode.body
        {
            data.resize(size as usize, 0);
            grow_dirty(dirty_from, (size.min(len)) as usize);
        }
        let now = SystemTime::now();
        inode.mtime = now;
        inode.ctime = now;
        self.used = self.used + size - len;
        Ok(())
    }

    pub fn set_perm(&mut self, ino: u64, perm: u16) -> Res<()> {
        let i = self.inode_mut(ino)?;
        i.perm = perm;
        i.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_owner(&mut self, ino: u64, uid: Option<u32>, gid: Option<u32>) -> Res<()> {
        let i = self.inode_mut(ino)?;
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        i.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_times(
        &mut self,
        ino: u64,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Res<()> {
        let i = self.inode_mut(ino)?;
        if let Some(a) = atime {
            i.atime = a;
        }
        if let Some(m) = mtime {
            i.mtime = m;
        }
        i.ctime = SystemTime::now();
        Ok(())
    }

    /// Makes a file's contents durable.
    pub fn fsync(&mut self, ino: u64, fh: u64) -> Res<()> {
        self.handle(fh)?;
        self.sync_file(ino)?;
        self.stats.fsyncs += 1;
        Ok(())
    }

    fn sync_file(&mut self, ino: u64) -> Res<()> {
        if let Body::File {
            data,
            durable,
            dirty_from,
        } = &mut self.inode_mut(ino)?.body
        {
            if let Some(from) = dirty_from.take() {
                durable.truncate(from);
                durable.extend_from_slice(&data[from..]);
            }
        }
        Ok(())
    }

    /// Makes a directory's entries durable.
    pub fn fsyncdir(&mut self, ino: u64) -> Res<()> {
        self.sync_dir(ino)?;
        self.stats.dir_fsyncs += 1;
        Ok(())
    }

    fn sync_dir(&mut self, ino: u64) -> Res<()> {
        let (old, new) = match &mut self.inode_mut(ino)?.body {
            Body::Dir { entries, durable } => {
                let old = std::mem::replace(durable, entries.clone());
                (old, entries.clone())
            }
            Body::File { .. } => return Err(Errno::ENOTDIR),
        };
        for child in new.values() {
            self.inode_mut(*child)?.durable_links += 1;
        }
        for child in old.values() {
            if let Some(c) = self.inodes.get_mut(child) {
                c.durable_links -= 1;
            }
            self.maybe_free(*child);
        }
        Ok(())
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        if matches!(self.inode(ino)?.body, Body::Dir { .. }) {
            return Err(Errno::EISDIR);
        }
        self.unlink_entry(parent, name)?;
        Ok(())
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        match &self.inode(ino)?.body {
            Body::Dir { entries, .. } if !entries.is_empty() => return Err(Errno::ENOTEMPTY),
            Body::Dir { .. } => {}
            Body::File { .. } => return Err(Errno::ENOTDIR),
        }
        self.unlink_entry(parent, name)?;
        Ok(())
    }

    /// `rename(2)` within the file system; with `noreplace`, refuses an existing target.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        self.entries(newparent)?;
        let is_dir = matches!(self.inode(ino)?.body, Body::Dir { .. });
        if let Some(target) = self.entries(newparent)?.get(newname).copied() {
            if target == ino {
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (&self.inode(target)?.body, is_dir) {
                (Body::Dir { entries, .. }, true) if !entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY)
                }
                (Body::Dir { .. }, false) => return Err(Errno::EISDIR),
                (Body::File { .. }, true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        if is_dir && self.is_ancestor(ino, newparent) {
            return Err(Errno::EINVAL);
        }
        // Link first, so that the inode is never without a name in between.
        self.link(newparent, newname, ino)?;
        self.unlink_entry(parent, name)?;
        Ok(())
    }

    /// Whether `dir` is `ancestor` or below it.
    fn is_ancestor(&self, ancestor: u64, dir: u64) -> bool {
        let mut seen = HashSet::new();
        let mut work = vec![ancestor];
        while let Some(d) = work.pop() {
            if d == dir {
                return true;
            }
            if !seen.insert(d) {
                continue;
            }
            if let Ok(entries) = self.entries(d) {
                work.extend(entries.values().copied());
            }
        }
        false
    }

    /// `(inode, kind, name)` of every entry, without `.` and `..`.
    pub fn readdir(&self, ino: u64) -> Res<Vec<(u64, FileType, OsString)>> {
        let entries = self.entries(ino)?;
        Ok(entries
            .iter()
            .filter_map(|(name, child)| {
                self.inodes
                    .get(child)
                    .map(|c| (*child, c.kind(), name.clone()))
            })
            .collect())
    }

    /// `(total blocks, free blocks)` of [`BLOCK`] bytes.
    pub fn statfs(&self) -> (u64, u64) {
        let total = self.capacity.unwrap_or(UNLIMITED_BYTES.max(self.used));
        (total / BLOCK, total.saturating_sub(self.used) / BLOCK)
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Power loss: everything not made durable is forgotten, and every handle dies.
    pub fn crash(&mut self) {
        self.handles.clear();
        // Which inodes the durable tree reaches.
        let mut reach = HashSet::from([ROOT]);
        let mut work = vec![ROOT];
        while let Some(d) = work.pop() {
            if let Some(Inode {
                body: Body::Dir { durable, .. },
                ..
            }) = self.inodes.get(&d)
            {
                for child in durable.values() {
                    if reach.insert(*child) {
                        work.push(*child);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| reach.contains(ino));
        let mut links: HashMap<u64, u32> = HashMap::new();
        self.used = 0;
        for inode in self.inodes.values_mut() {
            inode.opens = 0;
            match &mut inode.body {
                Body::File {
                    data,
                    durable,
                    dirty_from,
                } => {
                    data.clone_from(durable);
                    *dirty_from = None;
                    self.used += data.len() as u64;
                }
                Body::Dir { entries, durable } => {
                    entries.clone_from(durable);
                    for child in durable.values() {
                        *links.entry(*child).or_default() += 1;
                    }
                }
            }
        }
        for (ino, inode) in self.inodes.iter_mut() {
            let n = if *ino == ROOT {
                1
            } else {
                links.get(ino).copied().unwrap_or(0)
            };
            inode.links = n;
            inode.durable_links = n;
        }
        self.stats.crashes += 1;
    }

    /// Makes everything durable, as if every file and directory had been synced.
    pub fn sync_all(&mut self) {
        let inos: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in &inos {
            let _ = self.sync_file(*ino);
        }
        for ino in inos {
            if matches!(
                self.inodes.get(&ino).map(|i| &i.body),
                Some(Body::Dir { .. })
            ) {
                let _ = self.sync_dir(ino);
            }
        }
    }

    /// From now on, files may hold at most `used + bytes` in all (None: no limit).
    pub fn set_space(&mut self, bytes: Option<u64>) {
        self.capacity = bytes.map(|b| self.used.saturating_add(b));
    }

    /// Runs one control command; see `crate` docs for the list.
    pub fn command(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => Ok(()),
            ["crash"] => {
                self.crash();
                Ok(())
            }
            ["sync"] => {
                self.sync_all();
                Ok(())
            }
            ["full"] => {
                self.set_space(Some(0));
                Ok(())
            }
            ["space", "unlimited"] | ["unlimited"] => {
                self.set_space(None);
                Ok(())
            }
            ["space", n] => {
                let n = n.parse::<u64>().map_err(|e| format!("space {n:?}: {e}"))?;
                self.set_space(Some(n));
                Ok(())
            }
            _ => Err(format!(
                "unknown command {line:?}; known: crash, sync, full, space N, space unlimited"
            )),
        }
    }

    /// The control file's contents.
    pub fn status(&self) -> String {
        let s = &self.stats;
        format!(
            "crashes {}\nfsyncs {}\ndir_fsyncs {}\nwrites {}\nenospc {}\nstale_handle_errors {}\n\
             used {}\nspace {}\nopen_handles {}\ninodes {}\n",
            s.crashes,
            s.fsyncs,
            s.dir_fsyncs,
            s.writes,
            s.enospc,
            s.stale_handle_errors,
            self.used,
            self.capacity.map_or("unlimited".to_string(), |c| c
                .saturating_sub(self.used)
                .to_string()),
            self.handles.len(),
            self.inodes.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(st: &mut State, dir: u64, n: &str) -> (u64, u64) {
        let (ino, fh) = st
            .create(dir, name(n), 0o644, 0, 0, libc::O_CREAT, true)
            .unwrap();
        (ino, fh.unwrap())
    }

    fn contents(st: &mut State, dir: u64, n: &str) -> Option<Vec<u8>> {
        let ino = st.lookup(dir, name(n)).ok()?;
        let fh = st.open(ino, 0).unwrap();
        let out = st.read(fh, 0, 1 << 20).unwrap().to_vec();
        st.release(fh);
        Some(out)
    }

    #[test]
    fn unsynced_file_and_entry_vanish() {
        let mut st = State::new();
        let (_, fh) = file(&mut st, ROOT, "a");
        st.write(fh, 0, b"hello").unwrap();
        st.crash();
        assert_eq!(contents(&mut st, ROOT, "a"), None);
        assert_eq!(st.used(), 0);
    }

    #[test]
    fn synced_data_without_dir_sync_vanishes_and_with_it_survives() {
        let mut st = State::new();
        let (ino, fh) = file(&mut st, ROOT, "a");
        st.write(fh, 0, b"hello").unwrap();
        st.fsync(ino, fh).unwrap();
        st.crash();
        assert_eq!(contents(&mut st, ROOT, "a"), None, "entry was never synced");

        let (ino, fh) = file(&mut st, ROOT, "b");
        st.write(fh, 0, b"hello").unwrap();
        st.fsyncdir(ROOT).unwrap();
        st.write(fh, 5, b" world").unwrap();
        st.crash();
        assert_eq!(
            contents(&mut st, ROOT, "b"),
            Some(vec![]),
            "data never synced"
        );
        assert!(
            st.write(fh, 0, b"x").is_err(),
            "handle from before the crash"
        );

        let fh = st.open(ino, 0).unwrap();
        st.write(fh, 0, b"hello world").unwrap();
        st.fsync(ino, fh).unwrap();
        st.write(fh, 6, b"WORLD and more").unwrap();
        st.truncate(ino, 3).unwrap();
        st.write(fh, 3, b"p!").unwrap();
        assert_eq!(contents(&mut st, ROOT, "b"), Some(b"help!".to_vec()));
        st.crash();
        assert_eq!(contents(&mut st, ROOT, "b"), Some(b"hello world".to_vec()));
    }

    #[test]
    fn incremental_sync_keeps_earlier_bytes_right() {
        let mut st = State::new();
        let (ino, fh) = file(&mut st, ROOT, "log");
        st.fsyncdir(ROOT).unwrap();
        let mut want = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 7];
            st.write(fh, want.len() as u64, &chunk).unwrap();
            want.extend_from_slice(&chunk);
            if i % 3 == 0 {
                st.fsync(ino, fh).unwrap();
            }
        }
        // Overwrite in the middle, sync, grow with a hole, do not sync.
        st.write(fh, 10, b"XYZ").unwrap();
        want[10..13].copy_from_slice(b"XYZ");
        st.fsync(ino, fh).unwrap();
        st.write(fh, 1000, b"tail").unwrap();
        st.crash();
        assert_eq!(contents(&mut st, ROOT, "log"), Some(want));
    }

    #[test]
    fn rename_and_unlink_follow_dir_syncs() {
        let mut st = State::new();
        let d = st.mkdir(ROOT, name("d"), 0o755, 0, 0).unwrap();
        let (ino, fh) = file(&mut st, d, "tmp");
        st.write(fh, 0, b"new").unwrap();
        st.fsync(ino, fh).unwrap();
        let (old, ofh) = file(&mut st, d, "CURRENT");
        st.write(ofh, 0, b"old").unwrap();
        st.fsync(old, ofh).unwrap();
        st.fsyncdir(d).unwrap();
        st.fsyncdir(ROOT).unwrap();
        st.release(ofh);
        st.rename(d, name("tmp"), d, name("CURRENT"), false)
            .unwrap();
        assert_eq!(contents(&mut st, d, "CURRENT"), Some(b"new".to_vec()));
        st.crash();
        // The rename was not synced: the old file is back, and so is tmp.
        assert_eq!(contents(&mut st, d, "CURRENT"), Some(b"old".to_vec()));
        assert_eq!(contents(&mut st, d, "tmp"), Some(b"new".to_vec()));
        st.rename(d, name("tmp"), d, name("CURRENT"), false)
            .unwrap();
        st.fsyncdir(d).unwrap();
        st.unlink(d, name("CURRENT")).unwrap();
        st.crash();
        assert_eq!(contents(&mut st, d, "CURRENT"), Some(b"new".to_vec()));
        assert_eq!(contents(&mut st, d, "tmp"), None);
    }

    #[test]
    fn unsynced_directory_comes_back_empty_or_not_at_all() {
        let mut st = State::new();
        let d = st.mkdir(ROOT, name("d"), 0o755, 0, 0).unwrap();
        let (ino, fh) = file(&mut st, d, "f");
        st.fsync(ino, fh).unwrap();
        st.fsyncdir(ROOT).unwrap();
        st.crash();
        let d = st.lookup(ROOT, name("d")).unwrap();
        assert!(st.readdir(d).unwrap().is_empty());
        st.rmdir(ROOT, name("d")).unwrap();
        st.crash();
        assert!(st.lookup(ROOT, name("d")).is_ok(), "rmdir was not synced");
    }

    #[test]
    fn unlinked_open_file_stays_readable_and_is_freed_on_close() {
        let mut st = State::new();
        let (_, fh) = file(&mut st, ROOT, "a");
        st.write(fh, 0, b"data").unwrap();
        st.unlink(ROOT, name("a")).unwrap();
        assert_eq!(st.read(fh, 0, 10).unwrap(), b"data");
        assert_eq!(st.used(), 4);
        st.release(fh);
        assert_eq!(st.used(), 0);
        assert_eq!(st.inodes.len(), 1);
    }

    #[test]
    fn space_limit_refuses_growth_not_overwrites() {
        let mut st = State::new();
        let (ino, fh) = file(&mut st, ROOT, "a");
        st.write(fh, 0, b"0123456789").unwrap();
        st.command("space 5").unwrap();
        st.write(fh, 10, b"abcde").unwrap();
        assert_eq!(st.write(fh, 15, b"f"), Err(Errno::ENOSPC));
        st.write(fh, 0, b"overwrite").unwrap();
        assert_eq!(st.truncate(ino, 100), Err(Errno::ENOSPC));
        assert!(st.status().contains("space 0\n"), "{}", st.status());
        st.command("full").unwrap();
        st.truncate(ino, 3).unwrap();
        st.write(fh, 3, b"ab").unwrap();
        st.command("space unlimited").unwrap();
        st.write(fh, 100, b"x").unwrap();
        assert!(st.command("explode").is_err());
        let (total, free) = st.statfs();
        assert!(total > free && free > 0);
    }

    #[test]
    fn sync_command_makes_everything_durable() {
        let mut st = State::new();
        let d = st.mkdir(ROOT, name("d"), 0o755, 0, 0).unwrap();
        let (_, fh) = file(&mut st, d, "f");
        st.write(fh, 0, b"kept").unwrap();
        st.command("sync").unwrap();
        st.write(fh, 4, b" not this").unwrap();
        st.command("crash").unwrap();
        assert_eq!(contents(&mut st, d, "f"), Some(b"kept".to_vec()));
    }
}

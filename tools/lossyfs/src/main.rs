//! `lossyfs MOUNTPOINT`: mounts an empty lossyfs on MOUNTPOINT and serves it until SIGINT
//! or SIGTERM, then unmounts. Control it through `MOUNTPOINT/.lossyfs-ctl`, e.g.
//! `echo crash > MOUNTPOINT/.lossyfs-ctl` (see the crate docs for the commands).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mountpoint] = args.as_slice() else {
        eprintln!("usage: lossyfs MOUNTPOINT   (then: echo crash > MOUNTPOINT/.lossyfs-ctl)");
        std::process::exit(2);
    };
    if let Some(why) = lossyfs::unavailable() {
        eprintln!("lossyfs: cannot mount: {why}");
        std::process::exit(1);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mount = match lossyfs::mount(std::path::Path::new(mountpoint)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("lossyfs: mounting on {mountpoint}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "lossyfs: mounted on {mountpoint}; control file {mountpoint}/{}",
        lossyfs::CTL_NAME
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprint!("{}", mount.control().status());
    if let Err(e) = mount.unmount() {
        eprintln!("lossyfs: unmount: {e} (detached lazily)");
        std::process::exit(1);
    }
}

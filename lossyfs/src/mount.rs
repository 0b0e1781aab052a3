//! Mounting: a `Backing` served over FUSE on a background thread.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use parking_lot::Mutex;

use crate::backing::Backing;
use crate::fs::LossyFs;

/// A mounted lossyfs; dropping it (or `unmount`) unmounts.
pub struct Mounted {
    session: BackgroundSession,
    backing: Arc<Mutex<Backing>>,
}

impl Mounted {
    /// The file system's state, for commands (`power_loss`, `status`, ...).
    pub fn backing(&self) -> &Arc<Mutex<Backing>> {
        &self.backing
    }

    /// Unmounts and waits for the session thread.
    pub fn unmount(self) -> io::Result<()> {
        self.session.umount_and_join()
    }
}

/// Mounts `backing` at `mountpoint`. Needs root (or CAP_SYS_ADMIN) and /dev/fuse: the mount is
/// made directly with mount(2), without libfuse or fusermount.
pub fn mount(backing: Backing, mountpoint: &Path) -> io::Result<Mounted> {
    let backing = Arc::new(Mutex::new(backing));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lossyfs".to_string()),
        MountOption::Subtype("lossyfs".to_string()),
    ];
    // Any user may use the mount (a node may run as another user than the harness).
    config.acl = SessionACL::All;
    config.n_threads = Some(1);
    let session = fuser::spawn_mount(LossyFs::new(Arc::clone(&backing)), mountpoint, &config)?;
    Ok(Mounted { session, backing })
}

//! A spool for qcow2 bytes whose role is not yet known when they stream
//! past (data clusters before their L2 table). It is an anonymous file in
//! the target's directory, created on first use and gone when dropped;
//! spooled bytes sit at their host offset, so the file stays sparse.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::codec::qcow2::Spool;
use crate::error::{Error, Result};
use crate::roots::Dir;

/// Sparse anonymous spool file, created lazily in `dir`.
#[derive(Debug)]
pub struct FileSpool {
    dir: Arc<Dir>,
    file: Option<File>,
}

impl FileSpool {
    /// A spool that will live in `dir` once something is written.
    pub fn new(dir: Arc<Dir>) -> Self {
        FileSpool { dir, file: None }
    }

    fn file(&mut self) -> Result<&File> {
        if self.file.is_none() {
            let f = self.dir.tempfile().map_err(|e| {
                Error::from(e)
                    .with_message("creating a spool file")
                    .at_path(self.dir.path())
            })?;
            self.file = Some(f);
        }
        match &self.file {
            Some(f) => Ok(f),
            None => Err(Error::internal("spool file missing after its creation")),
        }
    }
}

impl Spool for FileSpool {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.file()?.write_all_at(data, offset)?;
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file()?.read_exact_at(buf, offset)?;
        Ok(())
    }
}

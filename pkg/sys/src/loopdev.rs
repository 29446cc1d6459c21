//! Loop devices: a file (an image layer) made a block device, to mount it.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use crate::SysError;

const LOOP_CONTROL: &str = "/dev/loop-control";
/// `ioctl` numbers of `<linux/loop.h>`.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
/// The device lets go of its file when the last user (the mount) closes it.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device attached to a file, held open: it detaches itself when its last user
/// lets go, so mount it before this is dropped (the mount then holds it).
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    _open: Option<std::fs::File>,
}

impl LoopDevice {
    /// A device this process does not hold (for tests of what uses one).
    pub fn unheld(path: PathBuf) -> Self {
        LoopDevice { path, _open: None }
    }
}

/// Attaches `file` read-only to a free loop device.
pub fn attach_read_only(file: &Path) -> Result<LoopDevice, SysError> {
    let backing = std::fs::File::open(file).map_err(|e| SysError::path("open", file, e))?;
    let control = std::fs::File::open(LOOP_CONTROL)
        .map_err(|e| SysError::path("open", Path::new(LOOP_CONTROL), e))?;
    // Another attach may take the free device between the two calls: then try the next.
    for _ in 0..8 {
        #[allow(unsafe_code)]
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number; `control` is an
        // open descriptor for the duration of the call.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(SysError::path(
                "ioctl(LOOP_CTL_GET_FREE)",
                Path::new(LOOP_CONTROL),
                std::io::Error::last_os_error(),
            ));
        }
        let device = PathBuf::from(format!("/dev/loop{number}"));
        let loop_file = std::fs::OpenOptions::new()
            .read(true)
            .open(&device)
            .map_err(|e| SysError::path("open", &device, e))?;
        let mut name = [0u8; 64];
        let bytes = file.as_os_str().as_encoded_bytes();
        let len = bytes.len().min(name.len() - 1);
        name[..len].copy_from_slice(&bytes[..len]);
        let config = LoopConfig {
            fd: u32::try_from(backing.as_raw_fd()).unwrap_or_default(),
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                size_limit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                file_name: name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        #[allow(unsafe_code)]
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` lays out
        // (repr(C), the kernel's field order and sizes); the pointer is valid for the call
        // and both descriptors are open.
        let done = unsafe {
            libc::ioctl(
                loop_file.as_raw_fd(),
                LOOP_CONFIGURE,
                std::ptr::from_ref(&config),
            )
        };
        if done == 0 {
            return Ok(LoopDevice {
                path: device,
                _open: Some(loop_file),
            });
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EBUSY) {
            return Err(SysError::path("ioctl(LOOP_CONFIGURE)", &device, error));
        }
    }
    Err(SysError::Invalid {
        call: "attach a loop device",
        reason: format!(
            "every free loop device was taken first, for {}",
            file.display()
        ),
    })
}

//! The NBD wire format, without I/O: constants, request encoding, and
//! the decoding of every structure a server sends (handshake greeting,
//! option replies, simple and structured reply chunks, block status).
//!
//! Everything here decodes untrusted bytes: each function takes a slice
//! of exactly the length it was asked to read (or the payload of a length
//! the caller already capped) and returns an error, never panics, on any
//! inconsistency — lengths that disagree with their payload, offsets
//! outside the request, zero-length extents, magic numbers that are not
//! NBD's.

use super::NbdError;

/// `NBDMAGIC`, the first eight bytes a server sends.
pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: a newstyle server, and the magic of every option request.
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The old-style handshake's second magic (refused).
pub(crate) const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of an option reply.
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags of the server.
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(crate) const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Options.
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;
pub(crate) const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_META_CONTEXT: u32 = 4;
/// Error replies have this bit set.
pub(crate) const REP_FLAG_ERROR: u32 = 1 << 31;

/// `NBD_INFO_*` types in `NBD_REP_INFO`.
pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags of an export.
pub(crate) const TF_HAS_FLAGS: u16 = 1 << 0;
pub(crate) const TF_READ_ONLY: u16 = 1 << 1;
pub(crate) const TF_SEND_FLUSH: u16 = 1 << 2;
pub(crate) const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub(crate) const TF_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;
pub(crate) const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags.
pub(crate) const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Structured reply chunk flag: the last chunk of the reply.
pub(crate) const REPLY_FLAG_DONE: u16 = 1 << 0;

/// Structured reply chunk types.
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
pub(crate) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub(crate) const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub(crate) const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub(crate) const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub(crate) const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// `base:allocation` flags.
pub(crate) const STATE_HOLE: u32 = 1 << 0;
pub(crate) const STATE_ZERO: u32 = 1 << 1;

/// The meta contexts asked for.
pub(crate) const CTX_BASE_ALLOCATION: &str = "base:allocation";
pub(crate) const CTX_ALLOCATION_DEPTH: &str = "qemu:allocation-depth";

/// The longest string (export name, context name) the protocol allows.
pub(crate) const MAX_STRING: usize = 4096;

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn protocol(reason: impl Into<String>) -> NbdError {
    NbdError::Protocol {
        reason: reason.into(),
    }
}

/// The greeting of a fixed-newstyle server (18 bytes): its handshake
/// flags.
pub(crate) fn parse_greeting(b: &[u8; 18]) -> Result<u16, NbdError> {
    if be64(b, 0) != NBDMAGIC {
        return Err(protocol("the server did not greet with NBDMAGIC"));
    }
    match be64(b, 8) {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => {
            return Err(NbdError::Unsupported {
                what: "the old-style handshake",
            });
        }
        _ => return Err(protocol("unknown handshake magic")),
    }
    let flags = be16(b, 16);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Unsupported {
            what: "a server without the fixed-newstyle handshake",
        });
    }
    Ok(flags)
}

/// An option request: magic, option, length, data.
pub(crate) fn option_request(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of `NBD_OPT_GO` for `export`, asking for the block size
/// constraints.
pub(crate) fn go_data(export: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + export.len());
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d
}

/// The data of `NBD_OPT_SET_META_CONTEXT` for `export` and `contexts`.
pub(crate) fn meta_context_data(export: &str, contexts: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
    for c in contexts {
        d.extend_from_slice(&(c.len() as u32).to_be_bytes());
        d.extend_from_slice(c.as_bytes());
    }
    d
}

/// The fixed part of an option reply (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptionReply {
    pub(crate) option: u32,
    pub(crate) reply: u32,
    pub(crate) len: u32,
}

pub(crate) fn parse_option_reply(b: &[u8; 20], option: u32) -> Result<OptionReply, NbdError> {
    if be64(b, 0) != OPT_REPLY_MAGIC {
        return Err(protocol("bad option reply magic"));
    }
    let r = OptionReply {
        option: be32(b, 8),
        reply: be32(b, 12),
        len: be32(b, 16),
    };
    if r.option != option {
        return Err(protocol(format!(
            "reply to option {} where option {option} was sent",
            r.option
        )));
    }
    Ok(r)
}

/// What an `NBD_REP_INFO` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export { size: u64, flags: u16 },
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred, maximum payload.
    BlockSize { min: u32, preferred: u32, max: u32 },
    /// Another type, ignored.
    Other,
}

pub(crate) fn parse_info(p: &[u8]) -> Result<Info, NbdError> {
    if p.len() < 2 {
        return Err(protocol("NBD_REP_INFO shorter than its type"));
    }
    match be16(p, 0) {
        INFO_EXPORT => {
            if p.len() != 12 {
                return Err(protocol("NBD_INFO_EXPORT of the wrong length"));
            }
            Ok(Info::Export {
                size: be64(p, 2),
                flags: be16(p, 10),
            })
        }
        INFO_BLOCK_SIZE => {
            if p.len() != 14 {
                return Err(protocol("NBD_INFO_BLOCK_SIZE of the wrong length"));
            }
            let (min, preferred, max) = (be32(p, 2), be32(p, 6), be32(p, 10));
            // The spec: powers of two, min ≤ 64 KiB, min ≤ preferred,
            // max a multiple of min.
            if !min.is_power_of_two()
                || min > 64 << 10
                || !preferred.is_power_of_two()
                || preferred < min
                || max < min
                || !max.is_multiple_of(min)
            {
                return Err(protocol(format!(
                    "block size constraints min {min}, preferred {preferred}, max {max} are inconsistent"
                )));
            }
            Ok(Info::BlockSize {
                min,
                preferred,
                max,
            })
        }
        _ => Ok(Info::Other),
    }
}

/// An `NBD_REP_META_CONTEXT`: the id and name of a context.
pub(crate) fn parse_meta_context(p: &[u8]) -> Result<(u32, &[u8]), NbdError> {
    if p.len() < 4 {
        return Err(protocol("NBD_REP_META_CONTEXT shorter than its id"));
    }
    Ok((be32(p, 0), &p[4..]))
}

/// A transmission request header (28 bytes).
pub(crate) fn request(cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// The first four bytes of a reply.
pub(crate) fn reply_magic(b: &[u8; 4]) -> u32 {
    be32(b, 0)
}

/// The rest of a simple reply header (12 bytes after the magic): error
/// and cookie.
pub(crate) fn parse_simple_reply(b: &[u8; 12]) -> (u32, u64) {
    (be32(b, 0), be64(b, 4))
}

/// The rest of a structured reply chunk header (16 bytes after the
/// magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub(crate) flags: u16,
    pub(crate) ty: u16,
    pub(crate) cookie: u64,
    pub(crate) len: u32,
}

pub(crate) fn parse_chunk_header(b: &[u8; 16]) -> ChunkHeader {
    ChunkHeader {
        flags: be16(b, 0),
        ty: be16(b, 2),
        cookie: be64(b, 4),
        len: be32(b, 12),
    }
}

/// An error chunk's payload: errno and message (`ERROR_OFFSET` adds the
/// offset, which must lie in the request).
pub(crate) fn parse_error_chunk(
    ty: u16,
    p: &[u8],
    request: (u64, u64),
) -> Result<(u32, String, Option<u64>), NbdError> {
    if p.len() < 6 {
        return Err(protocol("error chunk shorter than its header"));
    }
    let errno = be32(p, 0);
    let mlen = be16(p, 4) as usize;
    let tail = if ty == REPLY_TYPE_ERROR_OFFSET { 8 } else { 0 };
    if p.len() != 6 + mlen + tail {
        return Err(protocol("error chunk length disagrees with its message"));
    }
    let msg = String::from_utf8_lossy(&p[6..6 + mlen]).into_owned();
    let offset = if tail > 0 {
        let o = be64(p, 6 + mlen);
        if o < request.0 || o >= request.0.saturating_add(request.1) {
            return Err(protocol(format!(
                "error offset {o} lies outside the request"
            )));
        }
        Some(o)
    } else {
        None
    };
    if errno == 0 {
        return Err(protocol("error chunk with error number 0"));
    }
    Ok((errno, msg, offset))
}

/// The guest range `[offset, offset+len)` an `OFFSET_DATA` (header only:
/// the 8-byte offset; `len` is the chunk length less it) or
/// `OFFSET_HOLE` chunk fills, checked against the request `[start,
/// start+req_len)`. Returns the position in the request and the length.
pub(crate) fn check_read_piece(
    offset: u64,
    len: u64,
    start: u64,
    req_len: u64,
) -> Result<(usize, usize), NbdError> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if len > 0 && offset >= start && end <= start + req_len => {
            Ok(((offset - start) as usize, len as usize))
        }
        _ => Err(protocol(format!(
            "read chunk of {len} bytes at {offset} lies outside the request at {start} (+{req_len})"
        ))),
    }
}

/// The `OFFSET_HOLE` payload: offset and length (12 bytes).
pub(crate) fn parse_hole(p: &[u8]) -> Result<(u64, u64), NbdError> {
    if p.len() != 12 {
        return Err(protocol("OFFSET_HOLE chunk of the wrong length"));
    }
    Ok((be64(p, 0), u64::from(be32(p, 8))))
}

/// The 8-byte offset at the start of an `OFFSET_DATA` payload.
pub(crate) fn parse_data_offset(b: &[u8; 8]) -> u64 {
    be64(b, 0)
}

/// Coverage of a structured read: the pieces received must not overlap
/// and, at the end, must cover the request.
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    pieces: Vec<(usize, usize)>,
}

impl Coverage {
    pub(crate) fn add(&mut self, at: usize, len: usize) {
        self.pieces.push((at, len));
    }

    /// Whether the pieces tile `[0, len)` exactly.
    pub(crate) fn check(mut self, len: usize) -> Result<(), NbdError> {
        self.pieces.sort_unstable();
        let mut pos = 0usize;
        for (at, n) in self.pieces {
            if at != pos {
                return Err(protocol(if at < pos {
                    "read chunks overlap"
                } else {
                    "read reply leaves a gap"
                }));
            }
            pos = at + n;
        }
        if pos != len {
            return Err(protocol("read reply ends before the request does"));
        }
        Ok(())
    }
}

/// A `BLOCK_STATUS` chunk's payload: the context id and its extents
/// (length, flags), which must be non-empty, of non-zero lengths, and
/// together no longer than `max_len` (the request's length; the last may
/// reach past it only when it is the only one, which the spec allows).
pub(crate) fn parse_block_status(
    p: &[u8],
    max_len: u64,
) -> Result<(u32, Vec<(u32, u32)>), NbdError> {
    if p.len() < 12 || !(p.len() - 4).is_multiple_of(8) {
        return Err(protocol("BLOCK_STATUS chunk of a bad length"));
    }
    let id = be32(p, 0);
    let n = (p.len() - 4) / 8;
    let mut out = Vec::with_capacity(n);
    let mut total = 0u64;
    for i in 0..n {
        let len = be32(p, 4 + 8 * i);
        let flags = be32(p, 8 + 8 * i);
        if len == 0 {
            return Err(protocol("BLOCK_STATUS extent of length 0"));
        }
        total += u64::from(len);
        if total > max_len && !(n == 1 && i == 0) {
            return Err(protocol("BLOCK_STATUS extents reach past the request"));
        }
        out.push((len, flags));
    }
    Ok((id, out))
}

/// The name of an error number a server sends.
pub(crate) fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM (operation not permitted)",
        5 => "EIO (input/output error)",
        12 => "ENOMEM (out of memory)",
        22 => "EINVAL (invalid argument)",
        28 => "ENOSPC (no space left)",
        75 => "EOVERFLOW (value too large)",
        95 => "ENOTSUP (not supported)",
        108 => "ESHUTDOWN (server shutting down)",
        _ => "unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting() {
        let mut b = [0u8; 18];
        b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[16..].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_greeting(&b), Ok(3));
        b[17] = 2;
        assert!(matches!(
            parse_greeting(&b),
            Err(NbdError::Unsupported { .. })
        ));
        b[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
        assert!(parse_greeting(&b).is_err());
        b[0] = 0;
        assert!(parse_greeting(&b).is_err());
    }

    #[test]
    fn infos() {
        let mut p = vec![0, 0];
        p.extend_from_slice(&(1u64 << 30).to_be_bytes());
        p.extend_from_slice(&0x1234u16.to_be_bytes());
        assert_eq!(
            parse_info(&p),
            Ok(Info::Export {
                size: 1 << 30,
                flags: 0x1234
            })
        );
        assert!(parse_info(&p[..11]).is_err());
        let bs = |min: u32, pref: u32, max: u32| {
            let mut p = vec![0, 3];
            for v in [min, pref, max] {
                p.extend_from_slice(&v.to_be_bytes());
            }
            parse_info(&p)
        };
        assert!(bs(1, 4096, 32 << 20).is_ok());
        assert!(bs(3, 4096, 32 << 20).is_err());
        assert!(bs(512, 256, 32 << 20).is_err());
        assert!(bs(4096, 4096, 1000).is_err());
        assert!(bs(1 << 17, 1 << 17, 1 << 20).is_err());
        assert_eq!(parse_info(&[0, 9, 1]), Ok(Info::Other));
        assert!(parse_info(&[0]).is_err());
    }

    #[test]
    fn error_chunks() {
        let mut p = 22u32.to_be_bytes().to_vec();
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(b"bad");
        assert_eq!(
            parse_error_chunk(REPLY_TYPE_ERROR, &p, (0, 10)),
            Ok((22, "bad".into(), None))
        );
        assert!(parse_error_chunk(REPLY_TYPE_ERROR, &p[..8], (0, 10)).is_err());
        p.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(
            parse_error_chunk(REPLY_TYPE_ERROR_OFFSET, &p, (0, 10)),
            Ok((22, "bad".into(), Some(5)))
        );
        assert!(parse_error_chunk(REPLY_TYPE_ERROR_OFFSET, &p, (6, 10)).is_err());
        let zero = [0u8; 6];
        assert!(parse_error_chunk(REPLY_TYPE_ERROR, &zero, (0, 1)).is_err());
    }

    #[test]
    fn read_pieces_and_coverage() {
        assert_eq!(check_read_piece(10, 5, 10, 5), Ok((0, 5)));
        assert!(check_read_piece(9, 5, 10, 5).is_err());
        assert!(check_read_piece(10, 6, 10, 5).is_err());
        assert!(check_read_piece(10, 0, 10, 5).is_err());
        assert!(check_read_piece(u64::MAX, 2, 10, 5).is_err());
        let mut c = Coverage::default();
        c.add(3, 2);
        c.add(0, 3);
        assert!(c.check(5).is_ok());
        let mut c = Coverage::default();
        c.add(0, 3);
        c.add(2, 3);
        assert!(c.check(5).is_err());
        let mut c = Coverage::default();
        c.add(0, 3);
        assert!(c.check(5).is_err());
        assert!(Coverage::default().check(0).is_ok());
    }

    #[test]
    fn block_status() {
        let mut p = 7u32.to_be_bytes().to_vec();
        for (len, flags) in [(4096u32, 3u32), (8192, 0)] {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
        }
        assert_eq!(
            parse_block_status(&p, 12288),
            Ok((7, vec![(4096, 3), (8192, 0)]))
        );
        assert!(parse_block_status(&p, 12287).is_err());
        assert!(parse_block_status(&p[..4], 10).is_err());
        assert!(parse_block_status(&p[..13], 1 << 20).is_err());
        // One extent may reach past the request.
        assert!(parse_block_status(&p[..12], 10).is_ok());
        let mut z = 7u32.to_be_bytes().to_vec();
        z.extend_from_slice(&[0; 8]);
        assert!(parse_block_status(&z, 10).is_err());
    }
}

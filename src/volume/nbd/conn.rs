//! One NBD client connection over any byte stream: the fixed-newstyle
//! handshake (structured replies, the `base:allocation` and
//! `qemu:allocation-depth` meta contexts, `NBD_OPT_GO` with the block
//! size constraints), then one command at a time, each reply read whole
//! before the next request is sent.
//!
//! A reply that breaks the protocol (a wrong magic or cookie, a chunk
//! outside the request, lengths that disagree) leaves the stream at an
//! unknown place: the connection is then [`Connection::is_broken`] and
//! must be dropped. An error the server reports for a command (an errno)
//! leaves it usable. No length a server sends is trusted before it is
//! checked against the request and the caps in [`crate::limits`].

use std::io::{Read, Write};

use super::NbdError;
use super::proto::*;
use crate::limits::{
    MAX_NBD_OPTION_REPLIES, MAX_NBD_OPTION_REPLY, MAX_NBD_PAYLOAD, MAX_NBD_STATUS_PAYLOAD,
};

/// What the handshake learned of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExportInfo {
    /// Size in bytes.
    pub(crate) size: u64,
    /// Transmission flags (`TF_*`).
    pub(crate) flags: u16,
    /// Smallest block the server wants requests aligned to.
    pub(crate) min_block: u32,
    /// The block size the server prefers.
    pub(crate) preferred_block: u32,
    /// Largest READ/WRITE payload.
    pub(crate) max_payload: u32,
    /// Structured replies were negotiated.
    pub(crate) structured: bool,
    /// Context id of `base:allocation`.
    pub(crate) base_ctx: Option<u32>,
    /// Context id of `qemu:allocation-depth`.
    pub(crate) depth_ctx: Option<u32>,
}

impl ExportInfo {
    pub(crate) fn has(&self, flag: u16) -> bool {
        self.flags & TF_HAS_FLAGS != 0 && self.flags & flag != 0
    }
}

/// The extents one `BLOCK_STATUS` returned, per context, from the
/// request's offset on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) base: Vec<(u32, u32)>,
    pub(crate) depth: Option<Vec<(u32, u32)>>,
}

/// A connection; see the module docs.
#[derive(Debug)]
pub(crate) struct Connection<S> {
    stream: S,
    info: ExportInfo,
    cookie: u64,
    broken: bool,
}

fn io(e: &std::io::Error, what: &str) -> NbdError {
    NbdError::Io {
        kind: e.kind(),
        reason: format!("{what}: {e}"),
    }
}

fn read_exact<S: Read>(s: &mut S, buf: &mut [u8], what: &str) -> Result<(), NbdError> {
    s.read_exact(buf).map_err(|e| io(&e, what))
}

fn option_name(option: u32) -> &'static str {
    match option {
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "an option",
    }
}

/// Sends `option` and reads its replies until the final one, handing
/// each non-final reply (type, payload) to `each`. An error reply is
/// returned as [`NbdError::Refused`].
fn negotiate<S: Read + Write>(
    s: &mut S,
    option: u32,
    data: &[u8],
    mut each: impl FnMut(u32, &[u8]) -> Result<(), NbdError>,
) -> Result<(), NbdError> {
    s.write_all(&option_request(option, data))
        .map_err(|e| io(&e, "sending an option"))?;
    for _ in 0..MAX_NBD_OPTION_REPLIES {
        let mut h = [0u8; 20];
        read_exact(s, &mut h, "reading an option reply")?;
        let r = parse_option_reply(&h, option)?;
        if r.len > MAX_NBD_OPTION_REPLY {
            return Err(NbdError::TooLarge {
                what: "option reply",
                len: u64::from(r.len),
                max: u64::from(MAX_NBD_OPTION_REPLY),
            });
        }
        let mut p = vec![0u8; r.len as usize];
        read_exact(s, &mut p, "reading an option reply")?;
        if r.reply & REP_FLAG_ERROR != 0 {
            return Err(NbdError::Refused {
                option: option_name(option),
                reply: r.reply,
                message: String::from_utf8_lossy(&p).into_owned(),
            });
        }
        if r.reply == REP_ACK {
            if !p.is_empty() {
                return Err(NbdError::Protocol {
                    reason: "NBD_REP_ACK with a payload".into(),
                });
            }
            return Ok(());
        }
        each(r.reply, &p)?;
    }
    Err(NbdError::TooLarge {
        what: "number of option replies",
        len: MAX_NBD_OPTION_REPLIES as u64 + 1,
        max: MAX_NBD_OPTION_REPLIES as u64,
    })
}

impl<S: Read + Write> Connection<S> {
    /// Negotiates `export` on `stream`, which has just connected.
    pub(crate) fn handshake(mut stream: S, export: &str) -> Result<Self, NbdError> {
        if export.len() > MAX_STRING {
            return Err(NbdError::TooLarge {
                what: "export name",
                len: export.len() as u64,
                max: MAX_STRING as u64,
            });
        }
        let s = &mut stream;
        let mut g = [0u8; 18];
        read_exact(s, &mut g, "reading the server's greeting")?;
        let hflags = parse_greeting(&g)?;
        let cflags = u32::from(hflags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        s.write_all(&cflags.to_be_bytes())
            .map_err(|e| io(&e, "sending the client flags"))?;

        let structured = match negotiate(s, OPT_STRUCTURED_REPLY, &[], |_, _| Ok(())) {
            Ok(()) => true,
            Err(NbdError::Refused { .. }) => false,
            Err(e) => return Err(e),
        };
        let (mut base_ctx, mut depth_ctx) = (None, None);
        if structured {
            let data = meta_context_data(export, &[CTX_BASE_ALLOCATION, CTX_ALLOCATION_DEPTH]);
            let r = negotiate(s, OPT_SET_META_CONTEXT, &data, |ty, p| {
                if ty != REP_META_CONTEXT {
                    return Ok(());
                }
                let (id, name) = parse_meta_context(p)?;
                let slot = match name {
                    n if n == CTX_BASE_ALLOCATION.as_bytes() => &mut base_ctx,
                    n if n == CTX_ALLOCATION_DEPTH.as_bytes() => &mut depth_ctx,
                    _ => {
                        return Err(NbdError::Protocol {
                            reason: "the server chose a meta context not asked for".into(),
                        });
                    }
                };
                *slot = Some(id);
                Ok(())
            });
            match r {
                Ok(()) => {}
                Err(NbdError::Refused { .. }) => (base_ctx, depth_ctx) = (None, None),
                Err(e) => return Err(e),
            }
            if base_ctx.is_some() && base_ctx == depth_ctx {
                return Err(NbdError::Protocol {
                    reason: "two meta contexts share one id".into(),
                });
            }
        }

        let mut export_info = None;
        let mut sizes = None;
        negotiate(s, OPT_GO, &go_data(export), |ty, p| {
            if ty == REP_INFO {
                match parse_info(p)? {
                    Info::Export { size, flags } => export_info = Some((size, flags)),
                    Info::BlockSize {
                        min,
                        preferred,
                        max,
                    } => sizes = Some((min, preferred, max)),
                    Info::Other => {}
                }
            }
            Ok(())
        })?;
        let Some((size, flags)) = export_info else {
            return Err(NbdError::Protocol {
                reason: "NBD_OPT_GO succeeded without NBD_INFO_EXPORT".into(),
            });
        };
        let (min, preferred, max) = sizes.unwrap_or((1, 4096, MAX_NBD_PAYLOAD));
        if i64::try_from(size).is_err() {
            return Err(NbdError::Protocol {
                reason: format!("export size {size} is larger than the protocol allows"),
            });
        }
        Ok(Connection {
            stream,
            info: ExportInfo {
                size,
                flags,
                min_block: min,
                preferred_block: preferred.max(min),
                max_payload: max.min(MAX_NBD_PAYLOAD) / min * min,
                structured,
                base_ctx,
                depth_ctx,
            },
            cookie: 0,
            broken: false,
        })
    }

    /// What the handshake learned.
    pub(crate) fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The stream.
    pub(crate) fn stream(&self) -> &S {
        &self.stream
    }

    /// Whether the stream is at an unknown place and must be dropped.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Runs `f`, marking the connection broken on any error but one the
    /// server reported for the command.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, NbdError>,
    ) -> Result<T, NbdError> {
        if self.broken {
            return Err(NbdError::Protocol {
                reason: "the connection broke on an earlier request".into(),
            });
        }
        let r = f(self);
        if let Err(e) = &r
            && !matches!(e, NbdError::Server { .. })
        {
            self.broken = true;
        }
        r
    }

    fn send(
        &mut self,
        cmd: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> Result<u64, NbdError> {
        let end = offset.checked_add(u64::from(len));
        if !matches!(end, Some(e) if e <= self.info.size) {
            return Err(NbdError::Protocol {
                reason: format!("request of {len} bytes at {offset} lies past the export's end"),
            });
        }
        self.cookie = self.cookie.wrapping_add(1);
        let h = request(cmd, flags, self.cookie, offset, len);
        self.stream
            .write_all(&h)
            .and_then(|()| self.stream.write_all(data))
            .and_then(|()| self.stream.flush())
            .map_err(|e| io(&e, "sending a request"))?;
        Ok(self.cookie)
    }

    /// Reads one reply to `cookie`. `read` receives the data of a READ
    /// (the request's offset and its buffer); `status` collects the
    /// extents of a BLOCK_STATUS of `req_len` bytes.
    fn reply(
        &mut self,
        cookie: u64,
        offset: u64,
        req_len: u64,
        mut read: Option<&mut [u8]>,
        mut status: Option<&mut Status>,
    ) -> Result<(), NbdError> {
        let mut coverage = Coverage::default();
        let mut failure: Option<NbdError> = None;
        let mut base_seen = false;
        loop {
            let mut m = [0u8; 4];
            read_exact(&mut self.stream, &mut m, "reading a reply")?;
            match reply_magic(&m) {
                SIMPLE_REPLY_MAGIC => {
                    let mut h = [0u8; 12];
                    read_exact(&mut self.stream, &mut h, "reading a reply")?;
                    let (error, c) = parse_simple_reply(&h);
                    if c != cookie {
                        return Err(wrong_cookie(c, cookie));
                    }
                    if error != 0 {
                        return Err(server_error(error, String::new()));
                    }
                    if let Some(buf) = read.as_deref_mut() {
                        if self.info.structured {
                            return Err(NbdError::Protocol {
                                reason: "a simple reply with data to a READ after structured replies were negotiated".into(),
                            });
                        }
                        read_exact(&mut self.stream, buf, "reading data")?;
                    }
                    if status.is_some() {
                        return Err(NbdError::Protocol {
                            reason: "a simple reply to BLOCK_STATUS".into(),
                        });
                    }
                    return Ok(());
                }
                STRUCTURED_REPLY_MAGIC if self.info.structured => {}
                other => {
                    return Err(NbdError::Protocol {
                        reason: format!("unknown reply magic {other:#010x}"),
                    });
                }
            }
            let mut h = [0u8; 16];
            read_exact(&mut self.stream, &mut h, "reading a reply chunk")?;
            let ch = parse_chunk_header(&h);
            if ch.cookie != cookie {
                return Err(wrong_cookie(ch.cookie, cookie));
            }
            let len = u64::from(ch.len);
            let too_large = |max: u64| NbdError::TooLarge {
                what: "reply chunk",
                len,
                max,
            };
            match ch.ty {
                REPLY_TYPE_NONE => {
                    if ch.len != 0 || ch.flags & REPLY_FLAG_DONE == 0 {
                        return Err(NbdError::Protocol {
                            reason: "NBD_REPLY_TYPE_NONE with a payload or not last".into(),
                        });
                    }
                }
                REPLY_TYPE_OFFSET_DATA => {
                    let Some(buf) = read.as_deref_mut() else {
                        return Err(unexpected("OFFSET_DATA"));
                    };
                    if len < 9 || len - 8 > req_len {
                        return Err(too_large(req_len + 8));
                    }
                    let mut o = [0u8; 8];
                    read_exact(&mut self.stream, &mut o, "reading data")?;
                    let at = parse_data_offset(&o);
                    let (pos, n) = check_read_piece(at, len - 8, offset, req_len)?;
                    read_exact(&mut self.stream, &mut buf[pos..pos + n], "reading data")?;
                    coverage.add(pos, n);
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    let Some(buf) = read.as_deref_mut() else {
                        return Err(unexpected("OFFSET_HOLE"));
                    };
                    let p = self.payload(len, 12)?;
                    let (at, n) = parse_hole(&p)?;
                    let (pos, n) = check_read_piece(at, n, offset, req_len)?;
                    buf[pos..pos + n].fill(0);
                    coverage.add(pos, n);
                }
                REPLY_TYPE_BLOCK_STATUS => {
                    let Some(st) = status.as_deref_mut() else {
                        return Err(unexpected("BLOCK_STATUS"));
                    };
                    let p = self.payload(len, MAX_NBD_STATUS_PAYLOAD)?;
                    let (id, list) = parse_block_status(&p, req_len)?;
                    if Some(id) == self.info.base_ctx && !base_seen {
                        base_seen = true;
                        st.base = list;
                    } else if Some(id) == self.info.depth_ctx && st.depth.is_none() {
                        st.depth = Some(list);
                    } else {
                        return Err(NbdError::Protocol {
                            reason: format!("BLOCK_STATUS for context {id}, unknown or repeated"),
                        });
                    }
                }
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                    let p = self.payload(len, 6 + 0xffff + 8)?;
                    let (errno, msg, at) = parse_error_chunk(ch.ty, &p, (offset, req_len.max(1)))?;
                    let msg = match at {
                        Some(o) => format!("{msg} (at {o})"),
                        None => msg,
                    };
                    failure.get_or_insert(server_error(errno, msg));
                }
                ty => {
                    // An unknown error type is still an error; an unknown
                    // other type is a protocol violation.
                    if ty & (1 << 15) == 0 {
                        return Err(NbdError::Protocol {
                            reason: format!("unknown reply chunk type {ty}"),
                        });
                    }
                    let p = self.payload(len, 6 + 0xffff + 8)?;
                    let errno = if p.len() >= 4 {
                        u32::from_be_bytes([p[0], p[1], p[2], p[3]])
                    } else {
                        0
                    };
                    failure.get_or_insert(server_error(errno.max(5), String::new()));
                }
            }
            if ch.flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(buf) = read {
            coverage.check(buf.len())?;
        }
        if status.is_some() && !base_seen {
            return Err(NbdError::Protocol {
                reason: "BLOCK_STATUS reply without base:allocation".into(),
            });
        }
        Ok(())
    }

    /// Reads a chunk payload of `len` bytes, at most `max`.
    fn payload(&mut self, len: u64, max: u64) -> Result<Vec<u8>, NbdError> {
        if len > max {
            return Err(NbdError::TooLarge {
                what: "reply chunk",
                len,
                max,
            });
        }
        let mut p = vec![0u8; len as usize];
        read_exact(&mut self.stream, &mut p, "reading a reply chunk")?;
        Ok(p)
    }

    /// Reads `buf.len()` bytes (at most the maximum payload) at `offset`.
    pub(crate) fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let len = self.payload_len(buf.len())?;
        self.guarded(|c| {
            let cookie = c.send(CMD_READ, 0, offset, len, &[])?;
            c.reply(cookie, offset, u64::from(len), Some(buf), None)
        })
    }

    /// Writes `data` (at most the maximum payload) at `offset`.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        let len = self.payload_len(data.len())?;
        self.guarded(|c| {
            let cookie = c.send(CMD_WRITE, 0, offset, len, data)?;
            c.reply(cookie, offset, u64::from(len), None, None)
        })
    }

    /// WRITE_ZEROES of `len` bytes at `offset`; without `punch` the
    /// range stays allocated (`NBD_CMD_FLAG_NO_HOLE`).
    pub(crate) fn write_zeroes(
        &mut self,
        offset: u64,
        len: u32,
        punch: bool,
    ) -> Result<(), NbdError> {
        let flags = if punch { 0 } else { CMD_FLAG_NO_HOLE };
        self.simple(CMD_WRITE_ZEROES, flags, offset, len)
    }

    /// TRIM of `len` bytes at `offset`. Zeroing uses WRITE_ZEROES (which
    /// may punch, unless told not to): a trimmed range reads back as
    /// anything, so only the fuzz harness sends one.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn trim(&mut self, offset: u64, len: u32) -> Result<(), NbdError> {
        self.simple(CMD_TRIM, 0, offset, len)
    }

    /// FLUSH.
    pub(crate) fn flush(&mut self) -> Result<(), NbdError> {
        self.simple(CMD_FLUSH, 0, 0, 0)
    }

    fn simple(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> Result<(), NbdError> {
        self.guarded(|c| {
            let cookie = c.send(cmd, flags, offset, len, &[])?;
            c.reply(cookie, offset, u64::from(len), None, None)
        })
    }

    /// BLOCK_STATUS of up to `len` bytes at `offset`.
    pub(crate) fn block_status(&mut self, offset: u64, len: u32) -> Result<Status, NbdError> {
        if self.info.base_ctx.is_none() {
            return Err(NbdError::Unsupported {
                what: "block status without base:allocation",
            });
        }
        self.guarded(|c| {
            let cookie = c.send(CMD_BLOCK_STATUS, 0, offset, len, &[])?;
            let mut st = Status::default();
            c.reply(cookie, offset, u64::from(len), None, Some(&mut st))?;
            Ok(st)
        })
    }

    /// Says goodbye (`NBD_CMD_DISC`, which has no reply); errors are of
    /// no interest by then.
    pub(crate) fn disconnect(&mut self) {
        if !self.broken {
            self.cookie = self.cookie.wrapping_add(1);
            let h = request(CMD_DISC, 0, self.cookie, 0, 0);
            let _ = self.stream.write_all(&h).and_then(|()| self.stream.flush());
            self.broken = true;
        }
    }

    fn payload_len(&self, n: usize) -> Result<u32, NbdError> {
        if n as u64 > u64::from(self.info.max_payload) {
            return Err(NbdError::TooLarge {
                what: "request",
                len: n as u64,
                max: u64::from(self.info.max_payload),
            });
        }
        Ok(n as u32)
    }
}

fn wrong_cookie(got: u64, want: u64) -> NbdError {
    NbdError::Protocol {
        reason: format!("reply for request {got} where request {want} was pending"),
    }
}

fn unexpected(what: &str) -> NbdError {
    NbdError::Protocol {
        reason: format!("{what} chunk in the reply to another command"),
    }
}

fn server_error(errno: u32, message: String) -> NbdError {
    NbdError::Server { errno, message }
}

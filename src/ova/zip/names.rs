//! Member names and extra fields: what readers would name a member, and
//! the extra-field records that must agree between local and central headers.

use super::*;

/// A member's name as readers read it.
pub(super) fn decode_name(raw: &[u8], flags: u16) -> Result<String, String> {
    if raw.is_empty() {
        return Err("zip member with an empty name".into());
    }
    if raw.contains(&0) {
        return Err(format!(
            "zip member name '{}' holds a NUL byte; readers disagree on where it ends",
            crate::names::printable(&String::from_utf8_lossy(raw))
        ));
    }
    if flags & UTF8 != 0 {
        return String::from_utf8(raw.to_vec()).map_err(|_| {
            format!(
                "zip member name '{}' is marked UTF-8 (flag bit 11) but is not",
                crate::names::printable(&String::from_utf8_lossy(raw))
            )
        });
    }
    if raw.is_ascii() {
        return Ok(String::from_utf8_lossy(raw).into_owned());
    }
    Err(format!(
        "zip member name '{}' is not ASCII and not marked UTF-8 (flag bit 11); readers disagree on its characters",
        crate::names::printable(&String::from_utf8_lossy(raw))
    ))
}

/// What an extra field of a local header may hold that ovaio refuses.
pub(super) enum ExtraProblem {
    Zip64,
    Encrypted,
    Bad(String),
}

/// The records of an extra field: `(id, data)`.
pub(super) fn extra_records(extra: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    let mut rest = extra;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("malformed extra field (a record header is cut short)".into());
        }
        let id = le16(rest, 0);
        let len = usize::from(le16(rest, 2));
        if rest.len() < 4 + len {
            return Err(format!(
                "malformed extra field (record {id:#06x} runs past the field)"
            ));
        }
        out.push((id, &rest[4..4 + len]));
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Refuses zip64 and AES records, and an Info-ZIP Unicode Path that names
/// the member otherwise than its header (unzip would use that name).
pub(super) fn check_extra(extra: &[u8], name: &str) -> Result<(), ExtraProblem> {
    for (id, data) in extra_records(extra).map_err(ExtraProblem::Bad)? {
        match id {
            0x0001 => return Err(ExtraProblem::Zip64),
            0x9901 => return Err(ExtraProblem::Encrypted),
            0x7075 => unicode_path(data, name).map_err(ExtraProblem::Bad)?,
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn check_extra_central(extra: &[u8], name: &str) -> Result<(), String> {
    for (id, data) in extra_records(extra)? {
        if id == 0x7075 {
            unicode_path(data, name)?;
        }
    }
    Ok(())
}

pub(super) fn unicode_path(data: &[u8], name: &str) -> Result<(), String> {
    let path = data.get(5..).map(String::from_utf8_lossy);
    if path.as_deref() == Some(name) {
        Ok(())
    } else {
        Err("an Info-ZIP Unicode Path extra field names the member otherwise than its header; readers disagree on its name".into())
    }
}

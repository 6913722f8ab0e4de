//! How listings look: plain-text tables in aligned columns, and timestamps in RFC 3339.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Prints a table: a header and rows in columns as wide as their widest cell.
pub(crate) fn print_columns<R: AsRef<[String]>>(header: &[&str], rows: &[R]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.as_ref()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    for row in rows {
        line(row.as_ref());
    }
}

/// A unix time as RFC 3339 (`2024-05-01T12:00:00Z`); `None` if it is out of range.
pub(crate) fn rfc3339(unix_seconds: u64) -> Option<String> {
    let seconds = i64::try_from(unix_seconds).ok()?;
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

//! Dates as the DBCS API writes and reads them: `23-Jul-2016 23:04:54`
//! (UTC; written with a ` UTC` suffix, read with or without it).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `23-Jul-2016 23:04:54 UTC`.
pub fn api_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:02}-{}-{} {:02}:{:02}:{:02} UTC",
        t.day(),
        MONTHS[t.month() as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The API's form of an RFC 3339 time as the catalog stores it (the
/// input unchanged if it does not parse).
pub fn api_date_of(rfc3339: &str) -> String {
    OffsetDateTime::parse(rfc3339, &Rfc3339)
        .map(api_date)
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// `dd-MMM-yyyy HH:mm:ss`, UTC, with or without ` UTC` (so a date can be
/// copied from a backup list).
pub fn parse_api_date(s: &str) -> Result<OffsetDateTime, String> {
    let format = time::macros::format_description!("[day]-[month repr:short]-[year] [hour]:[minute]:[second]");
    let trimmed = s.trim().trim_end_matches(" UTC");
    time::PrimitiveDateTime::parse(trimmed, &format)
        .map(|t| t.assume_utc())
        .map_err(|e| {
            format!("timestamp {s:?} is not in the format dd-MMM-yyyy HH:mm:ss (UTC), e.g. 23-Jul-2016 23:04:54 ({e})")
        })
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("formattable")
}

pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// `TAG` + UTC time to the second, the form Oracle's API uses for dbTags.
pub fn db_tag(t: OffsetDateTime) -> String {
    format!(
        "TAG{:04}{:02}{:02}T{:02}{:02}{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_tags_sort_by_time() {
        let t = time::macros::datetime!(2016-07-23 23:04:54 UTC);
        assert_eq!(api_date(t), "23-Jul-2016 23:04:54 UTC");
        assert_eq!(parse_api_date(&api_date(t)).unwrap(), t);
        assert_eq!(parse_api_date("23-Jul-2016 23:04:54").unwrap(), t);
        assert!(
            parse_api_date("2016-07-23T23:04:54Z")
                .unwrap_err()
                .contains("dd-MMM-yyyy")
        );
        assert_eq!(db_tag(t), "TAG20160723T230454");
        assert!(db_tag(t) < db_tag(t + time::Duration::SECOND));
    }
}

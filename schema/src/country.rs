//! ISO 3166-1 alpha-2 country codes: the only country codes a policy may name.
//!
//! The list is the 249 officially assigned codes. Reserved and user-assigned codes (`EU`,
//! `UK`, `XK`, `ZZ`, …) are refused, so a typo never silently matches no request.

use crate::policy::Country;

/// Every officially assigned ISO 3166-1 alpha-2 code, sorted.
pub const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// The country for a code, if it is an assigned ISO 3166-1 alpha-2 code (upper case).
pub fn parse_country(code: &str) -> Option<Country> {
    ISO_3166_ALPHA2.binary_search(&code).ok()?;
    let bytes = code.as_bytes();
    Some(Country([bytes[0], bytes[1]]))
}

/// A hint for a code that is not assigned: the upper-case form, or a common confusion.
pub fn suggest(code: &str) -> Option<String> {
    let upper = code.to_ascii_uppercase();
    if upper != code && parse_country(&upper).is_some() {
        return Some(format!(
            "country codes are upper case: did you mean \"{upper}\"?"
        ));
    }
    let hint = match upper.as_str() {
        "UK" => "the United Kingdom is \"GB\"",
        "EU" => "\"EU\" is not a country; declare a zone listing its members",
        "XK" => "\"XK\" (Kosovo) is user-assigned, not an ISO 3166-1 code",
        _ => return None,
    };
    Some(hint.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_so_binary_search_works() {
        assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn accepts_assigned_codes_only() {
        assert!(parse_country("DE").is_some());
        assert!(parse_country("KP").is_some());
        assert!(parse_country("ZZ").is_none());
        assert!(parse_country("de").is_none());
        assert!(parse_country("UK").is_none());
        assert!(suggest("de").unwrap().contains("\"DE\""));
    }
}

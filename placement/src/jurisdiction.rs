use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PlacementError;

/// A data-residency jurisdiction, as in `newUniqueId({jurisdiction})` and
/// `namespace.jurisdiction(name)`. An object of a jurisdiction may only live on nodes tagged
/// with exactly that jurisdiction: tags do not imply one another (a `fedramp-high` node is not
/// thereby a `fedramp` node), so an operator states every jurisdiction a node may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Jurisdiction {
    /// `eu`
    Eu,
    /// `fedramp`
    Fedramp,
    /// `fedramp-high`
    FedrampHigh,
    /// `us`
    Us,
}

impl Jurisdiction {
    /// Every jurisdiction, in code order.
    pub const ALL: [Jurisdiction; 4] = [
        Jurisdiction::Eu,
        Jurisdiction::Fedramp,
        Jurisdiction::FedrampHigh,
        Jurisdiction::Us,
    ];

    /// The code for "no jurisdiction" in [`Jurisdiction::code_of`] / [`Jurisdiction::from_code`].
    pub const NONE_CODE: u8 = 0;

    /// The name Cloudflare uses: `"eu"`, `"fedramp"`, `"fedramp-high"`, `"us"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Jurisdiction::Eu => "eu",
            Jurisdiction::Fedramp => "fedramp",
            Jurisdiction::FedrampHigh => "fedramp-high",
            Jurisdiction::Us => "us",
        }
    }

    /// The byte stored in object ids. Stable forever: ids on disk depend on it. `0` is reserved
    /// for "no jurisdiction" (see [`Jurisdiction::code_of`]).
    pub const fn code(self) -> u8 {
        match self {
            Jurisdiction::Eu => 1,
            Jurisdiction::Fedramp => 2,
            Jurisdiction::FedrampHigh => 3,
            Jurisdiction::Us => 4,
        }
    }

    /// The code of an optional jurisdiction: [`Jurisdiction::NONE_CODE`] for `None`.
    pub const fn code_of(jurisdiction: Option<Jurisdiction>) -> u8 {
        match jurisdiction {
            Some(j) => j.code(),
            None => Self::NONE_CODE,
        }
    }

    /// Inverse of [`Jurisdiction::code_of`]: `0` is `Ok(None)`, an unused code is an error, so a
    /// corrupted or forged id byte is never read as "unrestricted".
    pub const fn from_code(code: u8) -> Result<Option<Jurisdiction>, PlacementError> {
        match code {
            0 => Ok(None),
            1 => Ok(Some(Jurisdiction::Eu)),
            2 => Ok(Some(Jurisdiction::Fedramp)),
            3 => Ok(Some(Jurisdiction::FedrampHigh)),
            4 => Ok(Some(Jurisdiction::Us)),
            other => Err(PlacementError::UnknownJurisdictionCode(other)),
        }
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Jurisdiction {
    type Err = PlacementError;

    /// Exact, case-sensitive match on Cloudflare's names, as the JS API is.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jurisdiction::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| PlacementError::UnknownJurisdiction(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for j in Jurisdiction::ALL {
            assert_eq!(j.as_str().parse::<Jurisdiction>(), Ok(j));
            assert_eq!(Jurisdiction::from_code(j.code()), Ok(Some(j)));
            assert_ne!(j.code(), Jurisdiction::NONE_CODE);
            assert_eq!(j.to_string(), j.as_str());
        }
        assert_eq!(Jurisdiction::from_code(0), Ok(None));
        assert_eq!(Jurisdiction::code_of(None), 0);
    }

    #[test]
    fn codes_are_pinned() {
        // Ids on disk carry these bytes; changing one would move objects between jurisdictions.
        let codes: Vec<u8> = Jurisdiction::ALL.iter().map(|j| j.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4]);
    }

    #[test]
    fn unknown_values_are_clear_errors() {
        let err = "EU".parse::<Jurisdiction>().unwrap_err();
        assert_eq!(err, PlacementError::UnknownJurisdiction("EU".into()));
        assert!(err.to_string().contains("\"fedramp-high\""), "{err}");
        assert!("".parse::<Jurisdiction>().is_err());
        for code in 5..=u8::MAX {
            assert_eq!(
                Jurisdiction::from_code(code),
                Err(PlacementError::UnknownJurisdictionCode(code))
            );
        }
    }

    #[test]
    fn serde_uses_cloudflare_names() {
        let json = serde_json::to_string(&Jurisdiction::ALL).unwrap();
        assert_eq!(json, r#"["eu","fedramp","fedramp-high","us"]"#);
        let back: Vec<Jurisdiction> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Jurisdiction::ALL);
        assert!(serde_json::from_str::<Jurisdiction>("\"mars\"").is_err());
    }
}

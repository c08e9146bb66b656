//! Stable codes as data: one list makes an enum, its wire strings, the list
//! a docs test checks, and its serde form. Codes are never renamed or
//! reused; a code this library does not know (from a newer daemon) decodes
//! as the enum's `Other` variant instead of failing.

/// Makes a code enum from `Variant => "wire_code",` lines.
macro_rules! stable_codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$doc:meta])* $variant:ident => $code:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$doc])* $variant, )+
            /// A code this version of the library does not know.
            Other(String),
        }

        impl $name {
            /// Every code this library knows, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire form of the code.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $code,)+
                    $name::Other(code) => code,
                }
            }

            /// Parses a wire code; unknown codes become `Other`.
            pub fn from_code(code: &str) -> $name {
                match code {
                    $($code => $name::$variant,)+
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let code = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Ok($name::from_code(&code))
            }
        }
    };
}

pub(crate) use stable_codes;

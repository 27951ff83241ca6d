//! `wire_enum!`: a closed set of states or kinds that travels as a string.
//!
//! A value this version does not know (sent by a newer peer) becomes
//! `Unknown(text)`, shown as is: never silently defaulted to a known value.

/// Defines an enum with unit variants, each with its wire word, plus
/// `Unknown(String)`; implements `as_str`, `Display`, `Serialize` and
/// `Deserialize` through the words.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version does not know, as received.
            Unknown(String),
        }

        impl $name {
            /// The word on the wire and in output.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $word, )+
                    Self::Unknown(word) => word,
                }
            }

            /// The variant for a wire word; unknown words are kept as `Unknown`.
            pub fn from_word(word: &str) -> Self {
                match word {
                    $( $word => Self::$variant, )+
                    other => Self::Unknown(other.to_string()),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    Self::Unknown(word) => write!(f, "unknown ({word})"),
                    known => f.write_str(known.as_str()),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok(Self::from_word(&word))
            }
        }
    };
}

pub(crate) use wire_enum;

#[cfg(test)]
mod tests {
    wire_enum! {
        /// A test enum.
        pub enum Colour {
            /// Red.
            Red => "red",
            /// Light blue.
            LightBlue => "light_blue",
        }
    }

    #[test]
    fn known_words_round_trip_and_unknown_ones_are_kept() {
        assert_eq!(
            serde_json::to_string(&Colour::LightBlue).unwrap(),
            "\"light_blue\""
        );
        let back: Colour = serde_json::from_str("\"red\"").unwrap();
        assert_eq!(back, Colour::Red);
        let newer: Colour = serde_json::from_str("\"ultraviolet\"").unwrap();
        assert_eq!(newer, Colour::Unknown("ultraviolet".into()));
        assert_eq!(newer.to_string(), "unknown (ultraviolet)");
        assert_eq!(serde_json::to_string(&newer).unwrap(), "\"ultraviolet\"");
    }
}

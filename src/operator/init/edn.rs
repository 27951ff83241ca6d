//! Just enough of a Clojure reader for `project.clj`, `build.clj` and
//! `deps.edn`: forms are read, never evaluated (see `clj.rs` for the few
//! expressions `init` understands).

/// One form, as far as `init` cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    /// `"text"` (escapes resolved).
    Str(String),
    /// `:name` (without the colon).
    Keyword(String),
    /// `name`, `ns/name`, a number, `true`, `nil`…
    Symbol(String),
    /// `( … )`.
    List(Vec<Form>),
    /// `[ … ]`.
    Vector(Vec<Form>),
    /// `{ … }`, keys and values alternating.
    Map(Vec<Form>),
    /// Anything else (`#{…}`, `#"…"`, `#(…)`, a character): read past, not kept.
    Other,
}

impl Form {
    /// The value of `key` in a map form.
    pub fn get(&self, key: &str) -> Option<&Form> {
        let Form::Map(items) = self else { return None };
        items
            .chunks(2)
            .find(|kv| kv[0] == Form::Keyword(key.to_string()))
            .and_then(|kv| kv.get(1))
    }
}

/// Reads every top-level form of `text`.
pub fn read_all(text: &str) -> Result<Vec<Form>, String> {
    let mut reader = Reader {
        chars: text.chars().collect(),
        pos: 0,
    };
    let mut forms = Vec::new();
    while let Some(form) = reader.next_form(None)? {
        forms.push(form);
    }
    Ok(forms)
}

struct Reader {
    chars: Vec<char>,
    pos: usize,
}

impl Reader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn line(&self) -> usize {
        self.chars[..self.pos.min(self.chars.len())]
            .iter()
            .filter(|c| **c == '\n')
            .count()
            + 1
    }

    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == ',' {
                self.pos += 1;
            } else if c == ';' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// The next form, or `None` at `close` (consumed) or at the end of input.
    fn next_form(&mut self, close: Option<char>) -> Result<Option<Form>, String> {
        loop {
            self.skip_blank();
            let Some(c) = self.peek() else {
                return match close {
                    Some(close) => Err(format!("unexpected end of file: `{close}` missing")),
                    None => Ok(None),
                };
            };
            if Some(c) == close {
                self.pos += 1;
                return Ok(None);
            }
            self.pos += 1;
            let form = match c {
                '(' => Form::List(self.items(')')?),
                '[' => Form::Vector(self.items(']')?),
                '{' => Form::Map(self.items('}')?),
                ')' | ']' | '}' => return Err(format!("line {}: unexpected `{c}`", self.line())),
                '"' => Form::Str(self.string()?),
                '\'' | '`' | '@' => return self.required(close).map(Some),
                '~' => {
                    if self.peek() == Some('@') {
                        self.pos += 1;
                    }
                    return self.required(close).map(Some);
                }
                // Metadata belongs to the form after it.
                '^' => {
                    self.required(close)?;
                    continue;
                }
                '\\' => {
                    // A character literal: `\a`, `\newline`, `\(`.
                    self.pos += 1;
                    self.atom();
                    Form::Other
                }
                '#' => match self.peek() {
                    Some('_') => {
                        self.pos += 1;
                        self.required(close)?;
                        continue;
                    }
                    Some('"') => {
                        self.pos += 1;
                        self.string()?;
                        Form::Other
                    }
                    Some('{') | Some('(') => {
                        self.required(close)?;
                        Form::Other
                    }
                    _ => {
                        // A tagged literal (`#inst "…"`) or `#'var`: skip the tag.
                        self.atom();
                        return self.required(close).map(Some);
                    }
                },
                ':' => Form::Keyword(self.atom()),
                _ => {
                    self.pos -= 1;
                    Form::Symbol(self.atom())
                }
            };
            return Ok(Some(form));
        }
    }

    /// A form that must follow (after a quote or metadata marker).
    fn required(&mut self, close: Option<char>) -> Result<Form, String> {
        let line = self.line();
        self.next_form(close)?
            .ok_or_else(|| format!("line {line}: a form is missing"))
    }

    fn items(&mut self, close: char) -> Result<Vec<Form>, String> {
        let mut items = Vec::new();
        while let Some(form) = self.next_form(Some(close))? {
            items.push(form);
        }
        Ok(items)
    }

    fn atom(&mut self) -> String {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || ",;()[]{}\"".contains(c) {
                break;
            }
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn string(&mut self) -> Result<String, String> {
        let line = self.line();
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(format!("line {line}: unterminated string"));
            };
            self.pos += 1;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let escaped = self.peek().unwrap_or('\\');
                    self.pos += 1;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                }
                other => out.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_project_files_contain() {
        let forms = read_all(
            r#";; comment
            (defproject example/inventory "1.0.0"
              :repositories ^:replace [] ; trailing
              :aliases {"x" ["do" "clean"]} #_ :ignored
              :regex #"a\"b" :set #{1 2} :char \( :quoted 'sym
              :uberjar-name "inv-%s.jar")"#,
        )
        .unwrap();
        let Form::List(items) = &forms[0] else {
            panic!("{forms:?}")
        };
        assert_eq!(items[0], Form::Symbol("defproject".into()));
        assert_eq!(items[1], Form::Symbol("example/inventory".into()));
        assert_eq!(items[2], Form::Str("1.0.0".into()));
        assert_eq!(items[3], Form::Keyword("repositories".into()));
        assert_eq!(items[4], Form::Vector(vec![]));
        assert_eq!(items[5], Form::Keyword("aliases".into()));
        assert_eq!(items[7], Form::Keyword("regex".into()));
        assert_eq!(items[14], Form::Symbol("sym".into()));
        assert_eq!(items[16], Form::Str("inv-%s.jar".into()));
        assert_eq!(items.len(), 17);
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        assert!(read_all("(defproject x \"1").is_err());
        assert!(read_all("(a))").is_err());
        assert!(read_all("(a ^)").is_err());
    }
}

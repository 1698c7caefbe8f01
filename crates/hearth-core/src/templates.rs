//! Templates compiled into the binary and overridable from a directory: a
//! file of the same name there replaces the built-in one, and other files
//! there can be included by the overrides. Mails and pages of every service
//! use them, so one directory brands everything a person sees.

use crate::MatrixError;
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("built-in template {name}: {source}")]
    BuiltIn {
        name: &'static str,
        #[source]
        source: minijinja::Error,
    },
    /// `key` is the config key that named the directory.
    #[error("{key} {dir}: {source}")]
    Dir {
        key: &'static str,
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("template {path}: {reason}")]
    File { path: String, reason: String },
}

/// A template set: built-ins, then the operator's files over them.
pub struct Templates {
    env: minijinja::Environment<'static>,
    /// Values every template sees unless its context sets its own.
    defaults: Map<String, Value>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field(
                "names",
                &self.env.templates().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Templates {
    /// Loads `built_in` and, from `dir` (named by the config key `key`),
    /// every `.txt` and `.html` file. Every template is parsed now, so a
    /// broken override stops start-up instead of a mail or a page.
    pub fn load(
        built_in: &'static [(&'static str, &'static str)],
        dir: Option<&Path>,
        key: &'static str,
        defaults: Map<String, Value>,
    ) -> Result<Self, TemplateError> {
        let mut env = minijinja::Environment::new();
        // Text templates read naturally with these: a `{% if %}` line
        // leaves no blank line behind.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        for (name, source) in built_in {
            env.add_template(name, source)
                .map_err(|source| TemplateError::BuiltIn { name, source })?;
        }
        if let Some(dir) = dir {
            let at = |source| TemplateError::Dir {
                key,
                dir: dir.display().to_string(),
                source,
            };
            for entry in std::fs::read_dir(dir).map_err(at)? {
                let path = entry.map_err(at)?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !path.is_file() || !(name.ends_with(".txt") || name.ends_with(".html")) {
                    continue;
                }
                let file = |reason: String| TemplateError::File {
                    path: path.display().to_string(),
                    reason,
                };
                let source = std::fs::read_to_string(&path).map_err(|e| file(e.to_string()))?;
                env.add_template_owned(name.to_owned(), source)
                    .map_err(|e| file(e.to_string()))?;
            }
        }
        Ok(Self { env, defaults })
    }

    /// Renders `name` with `context` (an object, or null) over the defaults.
    /// HTML templates escape every value.
    pub fn render(&self, name: &str, context: &Value) -> Result<String, MatrixError> {
        let mut merged = self.defaults.clone();
        match context {
            Value::Object(map) => merged.extend(map.clone()),
            Value::Null => {}
            _ => {
                return Err(MatrixError::internal(format_args!(
                    "template {name}: the context is not an object"
                )));
            }
        }
        self.env
            .get_template(name)
            .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&merged))))
            // The error names the template and line, never the context.
            .map_err(|e| MatrixError::internal(format_args!("rendering template {name}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BUILT_IN: &[(&str, &str)] = &[
        ("page.html", "<p>{{ brand }}: {{ text }}</p>"),
        ("note.txt", "{% if text %}\n{{ text }}\n{% endif %}\ndone"),
    ];

    fn defaults() -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("brand".to_owned(), json!("Hearth"));
        map
    }

    #[test]
    fn renders_built_ins_with_defaults_and_escapes_html() {
        let t = Templates::load(BUILT_IN, None, "k", defaults()).unwrap();
        assert_eq!(
            t.render("page.html", &json!({"text": "<b>"})).unwrap(),
            "<p>Hearth: &lt;b&gt;</p>"
        );
        assert_eq!(
            t.render("page.html", &json!({"brand": "Own", "text": "x"}))
                .unwrap(),
            "<p>Own: x</p>"
        );
        assert_eq!(
            t.render("note.txt", &json!({"text": "hi"})).unwrap(),
            "hi\ndone"
        );
        assert!(t.render("page.html", &json!([1])).is_err());
    }

    #[test]
    fn files_in_the_directory_override_and_broken_ones_stop_loading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page.html"), "<i>{{ text }}</i>").unwrap();
        std::fs::write(dir.path().join("ignored.bin"), "{{").unwrap();
        let t = Templates::load(BUILT_IN, Some(dir.path()), "k", defaults()).unwrap();
        assert_eq!(
            t.render("page.html", &json!({"text": "x"})).unwrap(),
            "<i>x</i>"
        );

        std::fs::write(dir.path().join("note.txt"), "{% if %}").unwrap();
        let err = Templates::load(BUILT_IN, Some(dir.path()), "k", defaults()).unwrap_err();
        assert!(err.to_string().contains("note.txt"), "{err}");
        let missing = dir.path().join("missing");
        let err =
            Templates::load(BUILT_IN, Some(&missing), "svc.templates_dir", defaults()).unwrap_err();
        assert!(err.to_string().starts_with("svc.templates_dir"), "{err}");
    }
}

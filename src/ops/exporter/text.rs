//! Prometheus' text exposition format (version 0.0.4): families of samples, each with its `# HELP`
//! and `# TYPE` lines, label values escaped. Families without samples are left out.

use std::fmt::Write;

/// The content type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family being filled.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Families in the order they are first asked for.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// The gauge `name`, created with `help` the first time.
    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, help, "gauge")
    }

    /// The counter `name`, created with `help` the first time.
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.family(name, help, "counter")
    }

    fn family(&mut self, name: &'static str, help: &'static str, kind: &'static str) -> &mut Family {
        let index = match self.families.iter().position(|f| f.name == name) {
            Some(index) => index,
            None => {
                self.families.push(Family { name, help, kind, samples: Vec::new() });
                self.families.len() - 1
            }
        };
        &mut self.families[index]
    }

    /// The text of every family that has samples.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in self.families.iter().filter(|f| !f.samples.is_empty()) {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            for (labels, value) in &family.samples {
                out.push_str(family.name);
                if !labels.is_empty() {
                    let pairs: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
                    let _ = write!(out, "{{{}}}", pairs.join(","));
                }
                let _ = writeln!(out, " {}", number(*value));
            }
        }
        out
    }
}

impl Family {
    /// Adds a sample with `labels` (written in the order given).
    pub fn add(&mut self, labels: &[(&'static str, &str)], value: f64) -> &mut Self {
        self.samples.push((labels.iter().map(|(k, v)| (*k, v.to_string())).collect(), value));
        self
    }
}

/// A value as the format writes it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let mut e = Exposition::default();
        e.gauge("a_status", "Status.").add(&[("stanza", "pg-meta")], 1.0).add(&[("stanza", "we\"ird\\\n")], 0.5);
        e.gauge("b_empty", "Never filled.");
        e.counter("c_total", "Count.").add(&[], 3.0);
        assert_eq!(
            e.render(),
            "# HELP a_status Status.\n# TYPE a_status gauge\na_status{stanza=\"pg-meta\"} 1\n\
             a_status{stanza=\"we\\\"ird\\\\\\n\"} 0.5\n# HELP c_total Count.\n# TYPE c_total counter\nc_total 3\n"
        );
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1e21), "1000000000000000000000");
    }
}

//! Tables for `show` commands: aligned columns on a terminal, tab-separated values otherwise
//! (so `kiln data show … | cut -f3` works).

use std::io::IsTerminal;

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        print!("{}", self.render(std::io::stdout().is_terminal()));
    }

    pub fn render(&self, aligned: bool) -> String {
        let lines = std::iter::once(&self.header).chain(&self.rows);
        if !aligned {
            return lines.map(|cells| cells.join("\t") + "\n").collect();
        }
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                lines
                    .clone()
                    .map(|cells| cells.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, cells) in lines.enumerate() {
            let padded: Vec<String> =
                cells.iter().zip(&widths).map(|(s, &w)| format!("{s:<w$}")).collect();
            out += padded.join("  ").trim_end();
            out.push('\n');
            if i == 0 {
                out += &widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  ");
                out.push('\n');
            }
        }
        out
    }
}

/// A piece of text on one line: control characters, tabs and newlines escaped.
pub fn escape(text: &str) -> String {
    text.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_tab_separated() {
        let mut t = Table::new(&["id", "piece"]);
        t.row(vec!["7".into(), "hello".into()]);
        t.row(vec!["1234".into(), "a".into()]);
        assert_eq!(t.render(false), "id\tpiece\n7\thello\n1234\ta\n");
        assert_eq!(t.render(true), "id    piece\n----  -----\n7     hello\n1234  a\n");
    }
}

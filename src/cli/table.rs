//! Plain-text tables for terminal listings: columns padded to their widest cell, with
//! optional note lines (`Error: …`) under a row, indented to its second column.

pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<(Vec<String>, Vec<String>)>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>, notes: Vec<String>) {
        self.rows.push((cells, notes));
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for (cells, _) in &self.rows {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let indent = " ".repeat(widths.first().map_or(0, |w| w + 2));
        let mut out = line(
            &self
                .headers
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>(),
        );
        out.push('\n');
        for (cells, notes) in &self.rows {
            out.push_str(&line(cells));
            out.push('\n');
            for note in notes {
                for (i, text) in note.lines().enumerate() {
                    let extra = if i == 0 { "" } else { "  " };
                    out.push_str(&format!("{indent}{extra}{text}\n"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_align_and_notes_indent() {
        let mut table = Table::new(&["STATUS", "NAME"]);
        table.row(vec!["COMPLETED".into(), "a".into()], vec![]);
        table.row(
            vec!["FAILED".into(), "bb".into()],
            vec!["Error: boom\nsecond line".into()],
        );
        assert_eq!(
            table.render(),
            "STATUS     NAME\nCOMPLETED  a\nFAILED     bb\n           Error: boom\n             second line\n"
        );
    }
}

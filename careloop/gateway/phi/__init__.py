"""Patient identifiers in free text: pattern rules (`rules`), name and place finding (`names`), word lists."""

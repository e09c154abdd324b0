"""kb adapt: the knowledge base teaches the retriever (a query encoder tuned on pseudo queries of its own chunks)."""

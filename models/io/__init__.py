"""Reading and writing the college's workbooks: roster, tasks, scores, exports, the demo college."""

"""The Conso side of the box: a professional's view of other sites' exams."""

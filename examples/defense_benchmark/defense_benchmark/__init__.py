"""One cell of a privacy-utility sweep as a Flower app (see the README)."""

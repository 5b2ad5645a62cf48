"""The Hugging Face Hub protocol: a client of an origin (client), the read API as hfbt serves it
(readapi), and a folder served as an origin (servedir)."""

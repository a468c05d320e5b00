module paygress.local/stack/pause

go 1.22

"""qtd.data"""

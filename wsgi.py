from flowagg import create_app

app = create_app()
